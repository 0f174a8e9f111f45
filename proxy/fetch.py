"""`SafeFetcher`: fetch third-party images and pages for anonymous users without becoming an SSRF tool.

Every hop is checked before it is requested (`check_url`: http/https only, no userinfo, literal IP hosts
judged by the address policy) and every DNS answer is filtered by `SafeResolver` inside the connector, so
the address actually connected to is always the one that was checked. Redirects are followed by hand so
each Location goes through the same checks. Bodies are read in chunks under a byte cap that applies to the
decompressed bytes (so gzip bombs stop early), and the whole fetch, all hops included, runs under one
deadline so an upstream that trickles bytes cannot hold a worker forever.

The app builds one session for its lifetime::

    session = create_client_session(policy)     # SafeConnector + DummyCookieJar + no env proxies
    fetcher = SafeFetcher(session, policy)
    ...
    await session.close()
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDictProxy
from yarl import URL

from classifier.decode import sniff_format
from proxy.addresses import AddressPolicy, RefusedAddressError, SafeResolver, parse_ip_literal
from proxy.errors import (
    AddressRefused,
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedType,
    UpstreamError,
    UpstreamTimeout,
)

# Response headers worth passing on to callers (cache validation and freshness); the rest is dropped so
# nothing upstream-controlled (Set-Cookie, CSP, ...) leaks into our own responses by accident.
KEPT_HEADERS = ("etag", "last-modified", "cache-control", "expires", "age", "content-language")
PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/json"})
IMAGE_ACCEPT = "image/png,image/jpeg,image/gif,image/webp,image/bmp,image/svg+xml;q=0.8,image/*;q=0.5"
PAGE_ACCEPT = "text/html,application/xhtml+xml,application/json"
# The formats the classifier decodes, by the name `sniff_format` gives them.
SNIFFED_MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "SVG": "image/svg+xml",
}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# RFC 9110 token characters; anything else in a media type means the header is garbage.
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+/[!#$%&'*+.^_`|~0-9a-z-]+")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch. Every field is a knob the app's settings expose."""

    # UNSAFE on a public server: lets any user reach the intranet. For local development only.
    allow_private_networks: bool = False
    # Networks exempted from the address check (CIDR strings), e.g. a trusted intranet image host.
    allowed_networks: tuple[str, ...] = ()
    # Real sites redirect once or twice (http->https, CDN); more is a loop or an attempt to waste our time.
    max_redirects: int = 5
    connect_timeout: float = 5.0
    # Longest silence between two reads.
    read_timeout: float = 10.0
    # The whole fetch, all redirects and the body included: the only limit a byte-trickling server hits.
    total_timeout: float = 20.0
    max_image_bytes: int = 20 * 2**20
    max_page_bytes: int = 5 * 2**20
    # Browsers handle ~2 KB reliably and real image URLs stay far below this; longer ones are abuse.
    max_url_length: int = 4096
    user_agent: str = "InvertOrNot-proxy/0.1 (+https://github.com/invertornot/proxy)"

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FetchPolicy.{name} must be positive")
        for name in ("max_image_bytes", "max_page_bytes", "max_url_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"FetchPolicy.{name} must be at least 1")
        if self.max_redirects < 0:
            raise ValueError("FetchPolicy.max_redirects must not be negative")
        self.address_policy  # noqa: B018 -- parse allowed_networks now so a typo fails at startup

    @cached_property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.build(allow_all=self.allow_private_networks, allowed_networks=self.allowed_networks)

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total_timeout, sock_connect=self.connect_timeout, sock_read=self.read_timeout
        )


@dataclass(frozen=True)
class FetchResult:
    url: str  # final URL, after redirects
    body: bytes
    # Images: the MIME type of the sniffed format (the bytes decide). Pages: the declared media type.
    content_type: str
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased subset, see KEPT_HEADERS
    declared_type: str = ""  # media type the upstream claimed, "" when absent or malformed
    charset: str | None = None
    image_format: str | None = None  # "PNG", "JPEG", ... for images; None for pages


def parse_content_type(value: str | None) -> tuple[str, str | None]:
    """Strictly parse a Content-Type header into (media type lower-cased, charset); ("", None) if unusable."""
    if not value:
        return "", None
    media, *params = value.split(";")
    media = media.strip().lower()
    if not _MEDIA_TYPE.fullmatch(media):
        return "", None
    charset = None
    for param in params:
        name, sep, val = param.partition("=")
        if sep and name.strip().lower() == "charset":
            charset = val.strip().strip('"').lower() or None
    return media, charset


def _check_host(host: str, policy: AddressPolicy) -> None:
    try:
        literal = parse_ip_literal(host)
    except ValueError as exc:
        raise BadRequest(f"malformed host: {exc}") from None
    if literal is not None:
        reason = policy.refusal(literal)
        if reason is not None:
            raise AddressRefused(f"refusing to fetch from {literal} ({reason})")
        if literal.version == 4 and str(literal) != host:
            # aiohttp refuses these too; say so clearly instead of failing later.
            raise BadRequest(f"write the IPv4 address {literal} as a dotted quad")
        return
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise BadRequest("malformed host name")
    if not policy.allow_all and (name == "localhost" or name.endswith(".localhost")):
        # RFC 6761: these always mean loopback; refuse without asking DNS (the resolver would refuse too).
        raise AddressRefused(f"refusing to fetch from {name} (loopback)")


def check_url(url: str | URL, policy: FetchPolicy) -> URL:
    """Parse and vet one URL before it is requested; raises BadRequest (400) or AddressRefused (403).

    Host names are judged again, by address, when the connector resolves them (see `SafeResolver`).
    """
    raw = url if isinstance(url, str) else str(url)
    if len(raw) > policy.max_url_length:
        raise BadRequest(f"URL longer than {policy.max_url_length} characters")
    try:
        parsed = URL(url) if isinstance(url, str) else url
        scheme, host, port = parsed.scheme, parsed.raw_host, parsed.port
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"malformed URL: {exc}") from None
    if scheme not in ("http", "https") or not parsed.is_absolute():
        raise BadRequest("only absolute http and https URLs can be fetched")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        # Credentials in URLs are a classic parser-confusion trick (http://good.com@evil.com/) and we
        # never want to send someone's password upstream.
        raise BadRequest("URLs with user info (user:password@) are not accepted")
    if not host:
        raise BadRequest("URL has no host")
    if port is None or not 0 < port < 65536:
        raise BadRequest("URL has an invalid port")
    _check_host(host, policy.address_policy)
    return parsed.with_fragment(None)


class SafeConnector(aiohttp.TCPConnector):
    """A TCPConnector whose resolver refuses non-public addresses; build it with `make_connector`."""

    def __init__(
        self, address_policy: AddressPolicy, *, resolver: AbstractResolver | None = None, **kwargs: Any
    ) -> None:
        inner = resolver if resolver is not None else aiohttp.DefaultResolver()
        super().__init__(resolver=SafeResolver(inner, address_policy), **kwargs)
        self.address_policy = address_policy


def create_client_session(policy: FetchPolicy, *, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """The app's one ClientSession for upstream fetches (call inside the running loop; close it at exit).

    No cookies ever (DummyCookieJar: one user's upstream session must not leak into another's fetch), no
    proxies from the environment, gzip/deflate decoded (the byte cap applies to decoded bytes).
    `resolver` replaces the system resolver that `SafeResolver` wraps (e.g. aiohttp's AsyncResolver).
    """
    return aiohttp.ClientSession(
        connector=SafeFetcher.make_connector(policy, resolver=resolver),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        trust_env=False,
        timeout=policy.client_timeout(),
        headers={"User-Agent": policy.user_agent},
    )


class SafeFetcher:
    """Fetch images and pages under a `FetchPolicy`; every failure is an `ApiError` with a stable code."""

    def __init__(self, session: aiohttp.ClientSession, policy: FetchPolicy) -> None:
        connector = session.connector
        if not isinstance(connector, SafeConnector) or connector.address_policy != policy.address_policy:
            # Without the filtering resolver, names resolving to private addresses would get through.
            raise ValueError("the session must use SafeFetcher.make_connector(policy) with the same policy")
        if not isinstance(session.cookie_jar, aiohttp.DummyCookieJar):
            raise ValueError("the session must use aiohttp.DummyCookieJar(): never store upstream cookies")
        if session.trust_env:
            # An environment proxy would make the connections for us, to addresses nobody checked.
            raise ValueError("the session must not use trust_env=True (proxies from the environment)")
        self._session = session
        self._policy = policy
        self._timeout = policy.client_timeout()

    @staticmethod
    def make_connector(policy: FetchPolicy, *, resolver: AbstractResolver | None = None) -> SafeConnector:
        """The connector for the app's session (see `create_client_session`, which uses it).

        Build the session as ``aiohttp.ClientSession(connector=SafeFetcher.make_connector(policy),
        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True, trust_env=False)``. The DNS cache is
        off: every new connection re-resolves the name and re-checks the answer it is about to use, so what
        a rebinding name points at now, not what it pointed at a minute ago, is what gets judged.
        """
        return SafeConnector(
            policy.address_policy,
            resolver=resolver,
            use_dns_cache=False,
            limit=100,
            # Be a polite client: one popular site must not take every connection.
            limit_per_host=8,
        )

    async def fetch_image(self, url: str) -> FetchResult:
        """Fetch an image; the body's own bytes must be a supported format whatever the server claims."""
        result = await self._fetch(url, accept=IMAGE_ACCEPT, max_bytes=self._policy.max_image_bytes)
        image_format = sniff_format(result.body)
        if image_format is None:
            served = result.declared_type or "no content type"
            raise UnsupportedType(f"the URL did not return an image (served as {served})")
        if image_format not in SNIFFED_MIME:
            # A real image, but one the classifier cannot decode (TIFF, AVIF, ICO, ...).
            raise UnsupportedType(f"images in {image_format} format are not supported")
        return replace(result, content_type=SNIFFED_MIME[image_format], image_format=image_format)

    async def fetch_page(self, url: str, *, accept: str = PAGE_ACCEPT) -> FetchResult:
        """Fetch an HTML page or a JSON document (e.g. a Wikipedia REST summary) of a type in `accept`."""
        wanted = {parse_content_type(part)[0] for part in accept.split(",")} & PAGE_TYPES
        if not wanted:
            raise ValueError(f"accept must name some of {sorted(PAGE_TYPES)}")

        def check_type(declared: str) -> None:
            # Decided from the headers so we never download a video just to refuse it.
            if declared not in wanted:
                served = declared or "no content type"
                raise UnsupportedType(f"expected one of {', '.join(sorted(wanted))}, got {served}")

        return await self._fetch(url, accept=accept, max_bytes=self._policy.max_page_bytes, check_type=check_type)

    async def _fetch(
        self,
        url: str,
        *,
        accept: str,
        max_bytes: int,
        check_type: Callable[[str], None] | None = None,
    ) -> FetchResult:
        target = check_url(url, self._policy)
        try:
            async with asyncio.timeout(self._policy.total_timeout):
                return await self._follow(target, accept, max_bytes, check_type)
        except ApiError:
            raise
        except TimeoutError:  # also aiohttp's ServerTimeoutError, ConnectionTimeoutError, SocketTimeoutError
            raise UpstreamTimeout(f"upstream did not answer in time (limit {self._policy.total_timeout:g} s)") from None
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, RefusedAddressError):
                raise AddressRefused(str(exc.os_error)) from None
            raise UpstreamError(f"cannot resolve host {exc.host!r}") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise UpstreamError(f"TLS failure talking to upstream: {exc}") from None
        except aiohttp.InvalidURL as exc:
            raise BadRequest(f"invalid URL: {exc}") from None
        except aiohttp.ClientPayloadError:
            raise UpstreamError("upstream connection broke off in the middle of the body") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None

    async def _follow(
        self, url: URL, accept: str, max_bytes: int, check_type: Callable[[str], None] | None
    ) -> FetchResult:
        headers = {"Accept": accept, "User-Agent": self._policy.user_agent}
        seen = {url}
        while True:
            async with self._session.get(url, headers=headers, allow_redirects=False, timeout=self._timeout) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    url = self._next_hop(url, resp.headers)
                    if url in seen:
                        raise UpstreamError("redirect loop", code="too_many_redirects")
                    if len(seen) > self._policy.max_redirects:
                        raise UpstreamError(
                            f"more than {self._policy.max_redirects} redirects", code="too_many_redirects"
                        )
                    seen.add(url)
                    continue
                _check_status(resp.status)
                declared, charset = parse_content_type(resp.headers.get(aiohttp.hdrs.CONTENT_TYPE))
                if check_type is not None:
                    check_type(declared)
                body = await _read_capped(resp, max_bytes)
                return FetchResult(
                    url=str(url),
                    body=body,
                    content_type=declared,
                    status=resp.status,
                    headers={k: resp.headers[k] for k in KEPT_HEADERS if k in resp.headers},
                    declared_type=declared,
                    charset=charset,
                )

    def _next_hop(self, url: URL, headers: CIMultiDictProxy[str]) -> URL:
        location = headers.get(aiohttp.hdrs.LOCATION)
        if not location:
            raise UpstreamError("upstream redirected without a Location header", code="bad_redirect")
        try:
            target = url.join(URL(location))
        except (ValueError, TypeError):
            raise UpstreamError("upstream redirected to a malformed URL", code="bad_redirect") from None
        try:
            return check_url(target, self._policy)
        except BadRequest as exc:  # AddressRefused passes through: the user should see 403
            message = f"upstream redirected to an unusable URL: {exc.message}"
            raise UpstreamError(message, code="bad_redirect") from None


def _check_status(status: int) -> None:
    if status in (404, 410):
        raise NotFound(f"upstream answered HTTP {status}")
    if not 200 <= status < 300:
        raise UpstreamError(f"upstream answered HTTP {status}")


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the (decompressed) body, stopping as soon as it passes `max_bytes`."""
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise PayloadTooLarge(f"upstream body is {resp.content_length} bytes, over the {max_bytes} limit")
    chunks: list[bytes] = []
    size = 0
    # `resp.content` yields decoded bytes, so a small gzip body that inflates hugely is stopped here. The
    # chunks are taken as they arrive (no re-slicing) and joined once: a page is copied once, not three
    # times (growing a bytearray, then freezing it).
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"upstream body exceeds the {max_bytes} byte limit")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
