"""Which IP addresses the fetcher may connect to, and a resolver that enforces it on every DNS answer.

The service fetches URLs chosen by anonymous users, so without this policy anyone could make it read the
cloud metadata endpoint (169.254.169.254), an admin panel on 127.0.0.1 or a database on 10.0.0.0/8 (SSRF).
The policy is applied to the address actually connected to: literal IP hosts are checked by the URL check
(aiohttp skips the resolver for them) and every DNS answer is filtered by `SafeResolver` right before the
connection is made, so a name that re-resolves to a private address later (DNS rebinding) is caught too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d, still routed as IPv4 by some stacks
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the low 32 bits are the target
_ULA = ipaddress.IPv6Network("fc00::/7")


def _ipv4_reason(ip: ipaddress.IPv4Address) -> str | None:
    # Named categories first so the message says *why*; `is_global` then catches every other special
    # range (documentation, benchmarking, 0.0.0.0/8, 240/4, ...). Multicast needs its own test because
    # `is_global` is True for parts of 224/4.
    if ip in _THIS_NETWORK:  # 0.0.0.0/8: Linux connects 0.0.0.0 to the local host
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip in _CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved or ip == _BROADCAST:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses that traffic to `ip` may really reach, with the name of the wrapping."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    elif ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are their own thing
        found.append(("IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo  # `ipaddress` already undoes the XOR on the client address
        found.extend((("Teredo server", server), ("Teredo client", client)))
    if ip in _NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    return found


def _ipv6_reason(ip: ipaddress.IPv6Address) -> str | None:
    for wrapping, inner in _embedded_ipv4(ip):
        reason = _ipv4_reason(inner)
        if reason is not None:
            return f"{wrapping} {reason} address"
    if ip in _NAT64:
        # On an IPv6-only host behind DNS64 every IPv4 site looks like this; the embedded address was
        # just checked, and `is_reserved` below would otherwise refuse all of them.
        return None
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_site_local:
        return "site-local"
    if ip in _ULA:
        return "unique local"
    if ip.is_multicast:
        return "multicast"
    if ip.ipv4_mapped is not None or ip in _IPV4_COMPATIBLE:
        return "IPv4-in-IPv6"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not globally routable"
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be connected to (e.g. ``"loopback"``), or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_reason(ip)
    return _ipv6_reason(ip)


@dataclass(frozen=True)
class AddressPolicy:
    """The address rule in force. `allow_all` is for development only: it allows the whole intranet."""

    allow_all: bool = False
    # Exceptions to the rule, e.g. an intranet image server; tests use it to reach 127.0.0.1 only.
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(cls, *, allow_all: bool, allowed_networks: Iterable[str] = ()) -> AddressPolicy:
        return cls(allow_all, tuple(ipaddress.ip_network(n, strict=True) for n in allowed_networks))

    def refusal(self, ip: IPAddress) -> str | None:
        if self.allow_all:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            # Scoped addresses are link-local by definition; drop the zone so `in` comparisons work.
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return None
        return refusal_reason(ip)


_NUMERIC_PART = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")


def parse_numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse `host` the way inet_aton() (and so getaddrinfo) does: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``.

    Returns None when `host` is not numeric at all (a DNS name). Raises ValueError for hosts that look
    numeric but are malformed, so the caller refuses them rather than letting a resolver guess.
    """
    parts = host.removesuffix(".").split(".")
    if not all(_NUMERIC_PART.fullmatch(p) for p in parts):
        return None
    if len(parts) > 4:
        raise ValueError(f"malformed numeric host {host!r}")
    values: list[int] = []
    for part in parts:
        if part[:2].lower() == "0x":
            if len(part) == 2:
                raise ValueError(f"malformed numeric host {host!r}")
            values.append(int(part[2:], 16))
        elif len(part) > 1 and part[0] == "0":
            if not set(part) <= set("01234567"):
                raise ValueError(f"malformed octal part in host {host!r}")
            values.append(int(part, 8))
        else:
            values.append(int(part, 10))
    # The last part fills all remaining bytes: a.b.c.d, a.b.(16 bits), a.(24 bits), (32 bits).
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        raise ValueError(f"numeric host {host!r} is out of range")
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names, in any spelling; None for a DNS name; ValueError if malformed."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        return ipaddress.IPv6Address(bare.replace("%25", "%", 1))
    return parse_numeric_ipv4(bare)


class RefusedAddressError(OSError):
    """Raised by `SafeResolver` when every address a name resolves to is refused.

    An OSError so aiohttp treats it like any DNS failure (wrapping it in ClientConnectorDNSError, whose
    `os_error` the fetcher inspects) instead of leaving a half-open connection attempt behind.
    """

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host!r} resolves only to refused addresses ({reason})")
        self.host = host
        self.reason = reason


class SafeResolver(AbstractResolver):
    """Wraps a real resolver and drops every answer the policy refuses, right before aiohttp connects.

    When some answers are public and some are not, only the public ones are kept, so a name with a
    mixed answer set can never steer a connection inward.
    """

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        reasons: list[str] = []
        for answer in answers:
            try:
                ip = ipaddress.ip_address(answer["host"])
            except ValueError:
                reasons.append("unparseable address")  # fail closed on anything we cannot judge
                continue
            reason = self._policy.refusal(ip)
            if reason is None:
                kept.append(answer)
            else:
                reasons.append(reason)
        if not kept:
            raise RefusedAddressError(host, ", ".join(dict.fromkeys(reasons)) or "no addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()
