"""SafeFetcher against real upstream servers on 127.0.0.1: well-behaved aiohttp apps and raw TCP misfits."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.errors import (
    AddressRefused,
    ApiError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedType,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from proxy.fetch import FetchPolicy, SafeFetcher, check_url, create_client_session
from tests.proxy.test_addresses import StaticResolver

IMAGES = Path(__file__).resolve().parents[2] / "classifier" / "dataset" / "images"
PNG = min(sorted(IMAGES.glob("*.png")), key=lambda p: p.stat().st_size).read_bytes()
JPEG = min(sorted(IMAGES.glob("*.jpg")), key=lambda p: p.stat().st_size).read_bytes()
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect/></svg>'
HTML = b"<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"

# Private networks allowed: the upstreams below live on 127.0.0.1.
OPEN = FetchPolicy(allow_private_networks=True, connect_timeout=1, read_timeout=1, total_timeout=2)
# The production rule, with only the test upstream's exact address let through.
ONLY_UPSTREAM = FetchPolicy(allowed_networks=("127.0.0.1/32",), connect_timeout=1, read_timeout=1, total_timeout=2)
STRICT = FetchPolicy()

Fetchers = Callable[..., Awaitable[SafeFetcher]]


# --------------------------------------------------------------------------------------------------------
# Upstreams


def _upstream_app() -> web.Application:
    seen: dict[str, list[str | None]] = {"cookie": [], "user-agent": [], "accept": []}

    async def image(request: web.Request) -> web.Response:
        for name in seen:
            seen[name].append(request.headers.get(name))
        return web.Response(
            body=PNG,
            content_type="image/png",
            headers={"ETag": '"abc"', "Cache-Control": "max-age=60", "Set-Cookie": "session=secret; Path=/"},
        )

    async def served_as(request: web.Request) -> web.Response:
        bodies = {"png": PNG, "jpeg": JPEG, "svg": SVG, "html": HTML}
        return web.Response(body=bodies[request.match_info["kind"]], headers={"Content-Type": request.query["ct"]})

    async def gzipped(request: web.Request) -> web.Response:
        raw = {"png": PNG, "zeros": bytes(int(request.query.get("n", "0")))}[request.match_info["kind"]]
        return web.Response(body=gzip.compress(raw), headers={"Content-Type": "image/png", "Content-Encoding": "gzip"})

    async def stream(request: web.Request) -> web.StreamResponse:
        # Chunked transfer: no Content-Length to trust or distrust.
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(PNG[:64])
        for _ in range(int(request.query["kib"])):
            await resp.write(bytes(1024))
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def redirect(request: web.Request) -> web.Response:
        headers = {"Location": request.query["to"]} if "to" in request.query else {}
        return web.Response(status=int(request.query.get("status", "302")), headers=headers)

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        location = "../../image.png" if n == 0 else f"/chain/{n - 1}/x"  # relative forms, as servers send
        return web.Response(status=301, headers={"Location": location})

    async def slow_chain(request: web.Request) -> web.Response:
        await asyncio.sleep(0.25)
        n = int(request.match_info["n"])
        return web.Response(status=302, headers={"Location": f"/slow/{n - 1}" if n else "/image.png"})

    async def loop(request: web.Request) -> web.Response:
        other = {"a": "b", "b": "a", "self": "self"}[request.match_info["name"]]
        return web.Response(status=302, headers={"Location": f"/loop/{other}"})

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=HTML, headers={"Content-Type": "text/html; charset=ISO-8859-1"})

    async def summary(request: web.Request) -> web.Response:
        return web.json_response({"title": "Tree", "extract_html": "<p>x</p>"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({name: values for name, values in seen.items()})

    async def closing(request: web.Request) -> web.Response:
        resp = web.Response(body=PNG, content_type="image/png")
        resp.force_close()  # a new connection (and DNS lookup) for every request
        return resp

    app = web.Application()
    app.router.add_get("/image.png", image)
    app.router.add_get("/served/{kind}", served_as)
    app.router.add_get("/gzip/{kind}", gzipped)
    app.router.add_get("/stream", stream)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/chain/{n}/x", chain)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/loop/{name}", loop)
    app.router.add_get("/slow/{n}", slow_chain)
    app.router.add_get("/page", page)
    app.router.add_get("/summary", summary)
    app.router.add_get("/echo", echo)
    app.router.add_get("/closing", closing)
    return app


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[URL]:
    server = TestServer(_upstream_app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield URL(f"http://127.0.0.1:{server.port}")
    finally:
        await server.close()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[URL]:
    """A bare TCP server for upstreams too broken for aiohttp to impersonate."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the fetcher hung up on us, which is what several tests want
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@pytest_asyncio.fixture
async def fetchers() -> AsyncIterator[Fetchers]:
    """Build fetchers the way the app does; their sessions are closed at teardown."""
    sessions: list[aiohttp.ClientSession] = []

    async def make(policy: FetchPolicy = OPEN, resolver: StaticResolver | None = None) -> SafeFetcher:
        session = create_client_session(policy, resolver=resolver)
        sessions.append(session)
        return SafeFetcher(session, policy)

    yield make
    for session in sessions:
        await session.close()


async def _fails(awaitable: Awaitable[object], error: type[ApiError], code: str) -> ApiError:
    with pytest.raises(error) as caught:
        await awaitable
    assert caught.value.code == code, caught.value
    return caught.value


# --------------------------------------------------------------------------------------------------------
# Errors and URL syntax


def test_error_hierarchy_statuses_codes_and_shape() -> None:
    expected = {
        BadRequest: (400, "bad_request"),
        AddressRefused: (403, "address_refused"),
        NotFound: (404, "not_found"),
        PayloadTooLarge: (413, "too_large"),
        UnsupportedType: (415, "unsupported_type"),
        UpstreamError: (502, "upstream_error"),
        UpstreamTimeout: (504, "upstream_timeout"),
    }
    for cls, (status, code) in expected.items():
        err = cls("boom")
        assert (err.status, err.code, err.message) == (status, code, "boom")
    custom = UpstreamError("loop", code="too_many_redirects")
    assert (custom.status, custom.code) == (502, "too_many_redirects")
    assert custom.to_body() == error_body("too_many_redirects", "loop")
    assert error_body("x", "y") == {"error": {"code": "x", "message": "y"}}


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/a.png",
        "http://user@example.com/a.png",
        "http://:pass@example.com/a.png",
        "ftp://example.com/a.png",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "//example.com/a.png",
        "/a.png",
        "http:///a.png",
        "http://exa mple.com/a.png",
        "http://exa_mple..com/a.png",
        "http://256.1.1.1/",
        "http://[::1::2]/",
        "http://example.com:0/",
        "http://8.8.8.8./",  # numeric host in a non-canonical spelling: aiohttp refuses these anyway
        "http://134744072/",  # 8.8.8.8 as one number
        "http://example.com/" + "a" * 5000,
    ],
)
def test_check_url_rejects_bad_syntax(url: str) -> None:
    with pytest.raises(BadRequest):
        check_url(url, STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://0/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1%25eth0]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",  # Teredo, client 127.0.0.1 (XORed)
        "http://2130706433/",
        "http://017700000001/",
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://127.0.0.1.:8080/",
        "http://１２７.０.０.１/",  # fullwidth digits: IDNA folds them to 127.0.0.1
        "http://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost/",
    ],
)
def test_check_url_refuses_private_hosts_in_every_spelling(url: str) -> None:
    with pytest.raises(AddressRefused) as caught:
        check_url(url, STRICT)
    assert caught.value.status == 403


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://[::1]/", "http://localhost/", "http://10.0.0.1/"])
def test_allow_private_networks_allows_them(url: str) -> None:
    assert check_url(url, OPEN).port is not None


def test_check_url_accepts_public_urls() -> None:
    url = check_url("https://upload.wikimedia.org/wikipedia/commons/a/a9/Example.jpg?x=1#frag", STRICT)
    assert url.host == "upload.wikimedia.org" and url.fragment == ""
    assert check_url("http://93.184.215.14:8080/a.png", STRICT).port == 8080
    assert check_url("http://[2606:4700::1111]/", STRICT).host == "2606:4700::1111"
    assert check_url("http://bücher.example/x.png", STRICT).raw_host == "xn--bcher-kva.example"


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        FetchPolicy(allowed_networks=("not a network",))
    with pytest.raises(ValueError):
        FetchPolicy(total_timeout=0)
    with pytest.raises(ValueError):
        FetchPolicy(max_redirects=-1)


# --------------------------------------------------------------------------------------------------------
# Session construction


@pytest.mark.asyncio
async def test_fetcher_refuses_sessions_that_would_bypass_the_checks() -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as plain:
        with pytest.raises(ValueError, match="make_connector"):
            SafeFetcher(plain, STRICT)
    connector = SafeFetcher.make_connector(STRICT)
    async with aiohttp.ClientSession(connector=connector) as with_cookies:
        with pytest.raises(ValueError, match="DummyCookieJar"):
            SafeFetcher(with_cookies, STRICT)
    connector = SafeFetcher.make_connector(STRICT)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=True
    ) as proxied:
        with pytest.raises(ValueError, match="trust_env"):
            SafeFetcher(proxied, STRICT)
    async with create_client_session(OPEN) as open_session:
        with pytest.raises(ValueError, match="same policy"):
            SafeFetcher(open_session, STRICT)  # an allow-all resolver under a strict fetcher
        assert not open_session.connector.use_dns_cache  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------------
# Success


@pytest.mark.asyncio
async def test_fetch_real_png_and_jpeg(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    result = await fetcher.fetch_image(str(upstream / "image.png"))
    assert result.body == PNG
    assert (result.status, result.content_type, result.image_format) == (200, "image/png", "PNG")
    assert result.url == str(upstream / "image.png")
    assert result.headers == {"etag": '"abc"', "cache-control": "max-age=60"}  # no Set-Cookie passed on
    jpeg = await fetcher.fetch_image(str((upstream / "served/jpeg").with_query(ct="image/jpeg")))
    assert (jpeg.body, jpeg.content_type, jpeg.image_format) == (JPEG, "image/jpeg", "JPEG")


@pytest.mark.asyncio
async def test_no_cookies_are_sent_and_user_agent_is(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    await fetcher.fetch_image(str(upstream / "image.png"))  # answers with Set-Cookie
    await fetcher.fetch_image(str(upstream / "image.png"))
    seen = (await fetcher.fetch_page(str(upstream / "echo"))).body
    assert b'"cookie": [null, null]' in seen
    assert OPEN.user_agent.encode() in seen
    assert b"image/png" in seen  # the image Accept header


@pytest.mark.asyncio
async def test_fetch_pages(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    page = await fetcher.fetch_page(str(upstream / "page"))
    assert (page.body, page.content_type, page.charset, page.image_format) == (
        HTML,
        "text/html",
        "iso-8859-1",
        None,
    )
    summary = await fetcher.fetch_page(str(upstream / "summary"), accept="application/json")
    assert summary.content_type == "application/json" and b'"title": "Tree"' in summary.body
    xhtml = (upstream / "served/html").with_query(ct="Application/XHTML+XML ; charset=utf-8")
    assert (await fetcher.fetch_page(str(xhtml))).content_type == "application/xhtml+xml"


# --------------------------------------------------------------------------------------------------------
# Content types: the bytes decide for images, the header for pages


@pytest.mark.asyncio
@pytest.mark.parametrize("served_as", ["application/octet-stream", "text/html", "image/jpeg", "", "garbage"])
async def test_png_bytes_are_accepted_whatever_they_are_served_as(
    upstream: URL, fetchers: Fetchers, served_as: str
) -> None:
    fetcher = await fetchers()
    result = await fetcher.fetch_image(str((upstream / "served/png").with_query(ct=served_as)))
    assert (result.body, result.content_type, result.image_format) == (PNG, "image/png", "PNG")
    assert result.declared_type == (served_as if "/" in served_as else "")


@pytest.mark.asyncio
async def test_png_with_no_content_type_header_at_all(fetchers: Fetchers) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(PNG) + PNG)
        await writer.drain()

    async with raw_upstream(handler) as url:
        result = await (await fetchers()).fetch_image(str(url / "x"))
    assert (result.body, result.declared_type, result.image_format) == (PNG, "", "PNG")


@pytest.mark.asyncio
async def test_html_served_as_png_is_unsupported(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    err = await _fails(
        fetcher.fetch_image(str((upstream / "served/html").with_query(ct="image/png"))),
        UnsupportedType,
        "unsupported_type",
    )
    assert err.status == 415 and "image/png" in err.message


@pytest.mark.asyncio
async def test_svg_accepted_only_when_the_bytes_are_svg(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    svg = await fetcher.fetch_image(str((upstream / "served/svg").with_query(ct="image/svg+xml")))
    assert (svg.content_type, svg.image_format) == ("image/svg+xml", "SVG")
    html_as_svg = (upstream / "served/html").with_query(ct="image/svg+xml")
    await _fails(fetcher.fetch_image(str(html_as_svg)), UnsupportedType, "unsupported_type")


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "accept"), [("image.png", None), ("page", "application/json")])
async def test_page_of_the_wrong_type_is_unsupported(
    upstream: URL, fetchers: Fetchers, path: str, accept: str | None
) -> None:
    fetcher = await fetchers()
    call = (
        fetcher.fetch_page(str(upstream / path))
        if accept is None
        else fetcher.fetch_page(str(upstream / path), accept=accept)
    )
    await _fails(call, UnsupportedType, "unsupported_type")


# --------------------------------------------------------------------------------------------------------
# Address policy through the real connector


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[2002:7f00:1::]",
        "[64:ff9b::7f00:1]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "2130706433",
        "0x7f.1",
        "localhost.",
        "localhost",
    ],
)
async def test_private_targets_refused_by_default(upstream: URL, fetchers: Fetchers, host: str) -> None:
    fetcher = await fetchers(STRICT)
    url = f"http://{host}:{upstream.port}/image.png"
    await _fails(fetcher.fetch_image(url), AddressRefused, "address_refused")
    await _fails(fetcher.fetch_page(url), AddressRefused, "address_refused")


@pytest.mark.asyncio
async def test_dns_names_resolving_inward_are_refused_by_the_resolver(upstream: URL, fetchers: Fetchers) -> None:
    # check_url cannot know where these names point: only the connector's resolver can refuse them.
    dns = StaticResolver({"evil.test": ["127.0.0.1"], "metadata.test": ["169.254.169.254", "fd00::1"]})
    fetcher = await fetchers(STRICT, dns)
    for name in ("evil.test", "metadata.test"):
        err = await _fails(
            fetcher.fetch_image(f"http://{name}:{upstream.port}/image.png"), AddressRefused, "address_refused"
        )
        assert "127.0.0.1" not in err.message and "169.254" not in err.message


@pytest.mark.asyncio
async def test_connection_goes_only_to_the_allowed_answer(upstream: URL, fetchers: Fetchers) -> None:
    # 127.0.0.2 would be refused (and nothing listens there); the fetch must use 127.0.0.1.
    dns = StaticResolver({"mixed.test": ["127.0.0.2", "127.0.0.1"]})
    fetcher = await fetchers(ONLY_UPSTREAM, dns)
    result = await fetcher.fetch_image(f"http://mixed.test:{upstream.port}/image.png")
    assert result.body == PNG


@pytest.mark.asyncio
async def test_dns_rebinding_is_checked_on_every_connection(upstream: URL, fetchers: Fetchers) -> None:
    dns = StaticResolver({"rebind.test": ["127.0.0.1"]})
    fetcher = await fetchers(ONLY_UPSTREAM, dns)
    url = f"http://rebind.test:{upstream.port}/closing"
    assert (await fetcher.fetch_image(url)).body == PNG
    dns.answers["rebind.test"] = ["10.1.2.3"]  # the attacker's name now points inward
    await _fails(fetcher.fetch_image(url), AddressRefused, "address_refused")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/image.png",
        "http://[::1]:{port}/image.png",
        "http://localhost:{port}/image.png",
        "http://0x7f.2:{port}/image.png",
        "http://inside.test:{port}/image.png",  # a name that resolves to 10.0.0.1
        "http://169.254.169.254/latest/meta-data/",
    ],
)
async def test_redirect_into_the_private_network_is_refused(upstream: URL, fetchers: Fetchers, target: str) -> None:
    fetcher = await fetchers(ONLY_UPSTREAM, StaticResolver({"inside.test": ["10.0.0.1"]}))
    assert (await fetcher.fetch_image(str(upstream / "image.png"))).body == PNG  # the first hop is fine
    hop = (upstream / "redirect").with_query(to=target.format(port=upstream.port))
    await _fails(fetcher.fetch_image(str(hop)), AddressRefused, "address_refused")


# --------------------------------------------------------------------------------------------------------
# Redirects


@pytest.mark.asyncio
async def test_relative_redirects_are_followed(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    result = await fetcher.fetch_image(str(upstream / "chain/3"))  # /chain/3 -> 2/x -> 1/x -> 0/x -> ../image.png
    assert result.body == PNG
    assert result.url == str(upstream / "image.png")
    for status in ("303", "307", "308"):
        hop = (upstream / "redirect").with_query(to="/image.png", status=status)
        assert (await fetcher.fetch_image(str(hop))).body == PNG


@pytest.mark.asyncio
async def test_redirect_limit(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers(FetchPolicy(allow_private_networks=True, max_redirects=4))
    assert (await fetcher.fetch_image(str(upstream / "chain/3"))).body == PNG  # exactly 4 redirects
    err = await _fails(fetcher.fetch_image(str(upstream / "chain/4")), UpstreamError, "too_many_redirects")
    assert err.status == 502


@pytest.mark.asyncio
async def test_redirect_loops(upstream: URL, fetchers: Fetchers) -> None:
    fetcher = await fetchers()
    for start in ("loop/self", "loop/a"):
        err = await _fails(fetcher.fetch_image(str(upstream / start)), UpstreamError, "too_many_redirects")
        assert "loop" in err.message  # caught on the first repeat, not after max_redirects hops


@pytest.mark.asyncio
@pytest.mark.parametrize("location", [None, "ftp://example.com/a.png", "javascript:alert(1)", "http://u:p@x.test/"])
async def test_bad_redirects_are_upstream_errors(upstream: URL, fetchers: Fetchers, location: str | None) -> None:
    fetcher = await fetchers()
    hop = upstream / "redirect" if location is None else (upstream / "redirect").with_query(to=location)
    err = await _fails(fetcher.fetch_image(str(hop)), UpstreamError, "bad_redirect")
    assert err.status == 502


# --------------------------------------------------------------------------------------------------------
# Upstream statuses and broken connections


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "error", "api_code"),
    [
        (404, NotFound, "not_found"),
        (410, NotFound, "not_found"),
        (500, UpstreamError, "upstream_error"),
        (403, UpstreamError, "upstream_error"),
        (429, UpstreamError, "upstream_error"),
        (304, UpstreamError, "upstream_error"),
    ],
)
async def test_upstream_statuses(
    upstream: URL, fetchers: Fetchers, code: int, error: type[ApiError], api_code: str
) -> None:
    err = await _fails((await fetchers()).fetch_image(str(upstream / f"status/{code}")), error, api_code)
    assert str(code) in err.message


@pytest.mark.asyncio
async def test_connection_reset_mid_body(fetchers: Fetchers) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + PNG[:1000])
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    async with raw_upstream(handler) as url:
        await _fails((await fetchers()).fetch_image(str(url / "x")), UpstreamError, "upstream_error")


@pytest.mark.asyncio
async def test_connection_refused_and_tls_failure(upstream: URL, fetchers: Fetchers) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # nothing listens once the socket is closed
    fetcher = await fetchers()
    await _fails(fetcher.fetch_image(f"http://127.0.0.1:{dead_port}/x.png"), UpstreamError, "upstream_error")
    # Speaking TLS to a plain-HTTP server fails the handshake.
    err = await _fails(
        fetcher.fetch_image(str(upstream.with_scheme("https") / "image.png")), UpstreamError, "upstream_error"
    )
    assert "TLS" in err.message


# --------------------------------------------------------------------------------------------------------
# Size caps and compression bombs


@pytest.mark.asyncio
async def test_streamed_body_over_the_cap(upstream: URL, fetchers: Fetchers) -> None:
    policy = FetchPolicy(allow_private_networks=True, max_image_bytes=100 * 1024)
    fetcher = await fetchers(policy)
    ok = await fetcher.fetch_image(str((upstream / "stream").with_query(kib="90")))
    assert len(ok.body) == 64 + 90 * 1024
    err = await _fails(
        fetcher.fetch_image(str((upstream / "stream").with_query(kib="4096"))), PayloadTooLarge, "too_large"
    )
    assert err.status == 413


@pytest.mark.asyncio
async def test_oversize_content_length_is_refused_before_reading(fetchers: Fetchers) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Announce 1 GB and send nothing: only an early refusal can avoid waiting for the timeout.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000000\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async with raw_upstream(handler) as url:
        started = time.monotonic()
        await _fails((await fetchers()).fetch_image(str(url / "x")), PayloadTooLarge, "too_large")
        assert time.monotonic() - started < 1.5  # well before the 2 s timeout


@pytest.mark.asyncio
async def test_gzip_bomb_is_capped_on_decompressed_bytes(upstream: URL, fetchers: Fetchers) -> None:
    cap = 256 * 1024
    fetcher = await fetchers(FetchPolicy(allow_private_networks=True, max_image_bytes=cap))
    bomb = gzip.compress(bytes(16 * 2**20))
    assert len(bomb) < cap // 8  # on the wire it is small: only the decoded size reveals it
    err = await _fails(
        fetcher.fetch_image(str((upstream / "gzip/zeros").with_query(n=str(16 * 2**20)))),
        PayloadTooLarge,
        "too_large",
    )
    assert str(cap) in err.message
    # A well-behaved gzip-encoded image is decoded and accepted.
    assert (await fetcher.fetch_image(str(upstream / "gzip/png"))).body == PNG


# --------------------------------------------------------------------------------------------------------
# Timeouts


@pytest.mark.asyncio
async def test_slowloris_upstream_hits_the_total_timeout(fetchers: Fetchers) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(200):  # a byte every 20 ms: never silent long enough for the read timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    policy = FetchPolicy(allow_private_networks=True, connect_timeout=0.5, read_timeout=0.3, total_timeout=0.6)
    async with raw_upstream(handler) as url:
        started = time.monotonic()
        err = await _fails((await fetchers(policy)).fetch_image(str(url / "x")), UpstreamTimeout, "upstream_timeout")
        elapsed = time.monotonic() - started
    assert err.status == 504
    assert 0.5 < elapsed < 2.0  # the 0.6 s deadline, with slack for a busy machine


@pytest.mark.asyncio
async def test_silent_upstream_hits_the_read_timeout(fetchers: Fetchers) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)  # accept, read the request, never answer

    policy = FetchPolicy(allow_private_networks=True, connect_timeout=0.5, read_timeout=0.3, total_timeout=5)
    async with raw_upstream(handler) as url:
        started = time.monotonic()
        await _fails((await fetchers(policy)).fetch_page(str(url / "x")), UpstreamTimeout, "upstream_timeout")
        assert time.monotonic() - started < 1.5  # the read timeout, well before the total one


@pytest.mark.asyncio
async def test_one_deadline_spans_all_redirects(upstream: URL, fetchers: Fetchers) -> None:
    # Each hop takes 0.25 s, well inside every per-request limit; five of them are not inside the deadline.
    policy = FetchPolicy(allow_private_networks=True, connect_timeout=0.5, read_timeout=0.5, total_timeout=0.6)
    fetcher = await fetchers(policy)
    assert (await fetcher.fetch_image(str(upstream / "slow/0"))).body == PNG
    started = time.monotonic()
    await _fails(fetcher.fetch_image(str(upstream / "slow/4")), UpstreamTimeout, "upstream_timeout")
    assert 0.5 < time.monotonic() - started < 2.0
