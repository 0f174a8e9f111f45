"""The address policy and the filtering resolver, on real addresses and the real system resolver."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from proxy.addresses import (
    AddressPolicy,
    RefusedAddressError,
    SafeResolver,
    parse_ip_literal,
    parse_numeric_ipv4,
    refusal_reason,
)


def _teredo(client: str, server: str = "65.54.227.120") -> str:
    """Build a Teredo address the RFC 4380 way: 2001:0::/32, server, flags, port, client XOR 0xffffffff."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= (0xFFFF ^ 40000) << 32  # obfuscated port
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address(value))


REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("233.252.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", ""),  # documentation range
    ("198.18.0.1", ""),  # benchmarking range
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped private"),
    ("::ffff:8.8.8.8", "IPv4-in-IPv6"),  # mapped addresses never belong in a DNS answer
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::169.254.169.254", "IPv4-compatible link-local"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a9fe:a9fe::1", "6to4 link-local"),
    ("2002:0a00:0001::", "6to4 private"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
    (_teredo("127.0.0.1"), "Teredo client loopback"),
    (_teredo("10.0.0.1"), "Teredo client private"),
    (_teredo("8.8.8.8"), "private"),  # 2001::/32 itself is not globally routable
    ("2001:db8::1", "private"),  # documentation
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.32.0.1",  # just outside 172.16/12
    "100.128.0.1",  # just outside 100.64/10
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "2002:808:808::1",  # 6to4 of a public address
    "64:ff9b::808:808",  # NAT64 (DNS64 networks) of a public address
]


@pytest.mark.parametrize(("address", "reason_part"), REFUSED)
def test_refused_addresses(address: str, reason_part: str) -> None:
    reason = refusal_reason(ipaddress.ip_address(address))
    assert reason is not None, address
    assert reason_part in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_teredo_helper_really_xors_the_client() -> None:
    teredo = ipaddress.IPv6Address(_teredo("127.0.0.1"))
    assert teredo.teredo == (ipaddress.IPv4Address("65.54.227.120"), ipaddress.IPv4Address("127.0.0.1"))
    assert "7f00" not in str(teredo)  # the plain embedding would be easy to spot; the XORed one is not


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.0x10.0x100", "10.16.1.0"),
        ("169.254.43518", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_numeric_ipv4_forms_parse_like_inet_aton(host: str, expected: str) -> None:
    assert parse_numeric_ipv4(host) == ipaddress.IPv4Address(expected)
    if "." in host.removesuffix(".") or host.isdigit():
        # Cross-check against the C library the resolver itself uses.
        assert socket.inet_ntoa(socket.inet_aton(host.removesuffix("."))) == expected


@pytest.mark.parametrize("host", ["example.com", "0x7f.example", "1.2.3.com", "localhost", "xn--bcher-kva.de"])
def test_names_are_not_numeric(host: str) -> None:
    assert parse_numeric_ipv4(host) is None


@pytest.mark.parametrize("host", ["256.0.0.1", "1.2.3.4.5", "0x", "08.0.0.1", "1.16777216", "4294967296"])
def test_malformed_numeric_hosts_raise(host: str) -> None:
    with pytest.raises(ValueError):
        parse_numeric_ipv4(host)


def test_ip_literals() -> None:
    assert parse_ip_literal("::1") == ipaddress.IPv6Address("::1")
    assert parse_ip_literal("[::ffff:7f00:1]") == ipaddress.IPv6Address("::ffff:127.0.0.1")
    assert parse_ip_literal("fe80::1%25eth0") == ipaddress.IPv6Address("fe80::1%eth0")
    assert parse_ip_literal("example.org") is None
    with pytest.raises(ValueError):
        parse_ip_literal("::1::2")


def test_policy_exceptions_and_allow_all() -> None:
    loopback = ipaddress.ip_address("127.0.0.1")
    assert AddressPolicy().refusal(loopback) == "loopback"
    assert AddressPolicy(allow_all=True).refusal(loopback) is None
    only_one = AddressPolicy.build(allow_all=False, allowed_networks=["127.0.0.1/32"])
    assert only_one.refusal(loopback) is None
    assert only_one.refusal(ipaddress.ip_address("127.0.0.2")) == "loopback"
    assert only_one.refusal(ipaddress.ip_address("::1")) == "loopback"
    with pytest.raises(ValueError):
        AddressPolicy.build(allow_all=False, allowed_networks=["10.0.0.1/8"])  # host bits set: a typo


class StaticResolver(AbstractResolver):
    """A stand-in DNS server: fixed answers per name."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_resolver_drops_refused_answers_and_keeps_public_ones() -> None:
    inner = StaticResolver({"mixed.test": ["10.0.0.5", "93.184.215.14", "::1", "2606:4700::1"]})
    answers = await SafeResolver(inner, AddressPolicy()).resolve("mixed.test", 443)
    assert [a["host"] for a in answers] == ["93.184.215.14", "2606:4700::1"]


@pytest.mark.asyncio
async def test_resolver_refuses_when_every_answer_is_refused() -> None:
    inner = StaticResolver({"inside.test": ["169.254.169.254", "fd00::1", "not-an-ip"]})
    with pytest.raises(RefusedAddressError) as caught:
        await SafeResolver(inner, AddressPolicy()).resolve("inside.test", 80)
    assert isinstance(caught.value, OSError)
    assert "link-local" in caught.value.reason and "unique local" in caught.value.reason
    assert "169.254" not in str(caught.value)  # never tell a prober which internal address a name has


@pytest.mark.asyncio
@pytest.mark.parametrize("host", ["localhost", "0x7f.1", "2130706433"])
async def test_real_system_resolver_answers_for_loopback_are_refused(host: str) -> None:
    resolver = SafeResolver(ThreadedResolver(), AddressPolicy())
    with pytest.raises(RefusedAddressError):
        await resolver.resolve(host, 80, family=socket.AF_UNSPEC)
    # ... and the same lookup passes when the operator allows private networks.
    allowing = SafeResolver(ThreadedResolver(), AddressPolicy(allow_all=True))
    assert any(ipaddress.ip_address(a["host"]).is_loopback for a in await allowing.resolve(host, 80))
