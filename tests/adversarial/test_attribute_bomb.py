"""Attribute bombs: tags with so many attributes that lexbor's duplicate checks go quadratic (issue #9).

lexbor compares every new attribute of a tag with those it already holds: one tag with 20,000 distinct
attribute names (128 KB) takes 0.8 s to parse, so a 4 MB page could take minutes. `proxy.nesting` bounds
the attributes per tag before parsing, and the rewriter refuses such pages like nesting bombs
("page_too_complex", 413 through the page proxy). Real pages must pass by a wide margin, and the bound
must stay an upper bound whatever the bytes are (a hypothesis property against lexbor itself).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborHTMLParser

from classifier.heuristic import SaturationHeuristic
from proxy.app import create_app
from proxy.nesting import estimate_attributes, estimate_nesting
from proxy.rewrite import Page, RewriteError, RewriteOptions
from tests.proxy.service_support import serving_on_loopback
from tests.proxy.service_support import settings as service_settings

Client = TestClient[web.Request, web.Application]
URL = "https://en.wikipedia.org/wiki/Dog"
LIMIT = RewriteOptions().max_attribute_work or 0
ROOT = Path(__file__).resolve().parents[2]
REAL_PAGES = sorted((ROOT.parent / "shared" / "pages").glob("*.html")) + sorted(
    (ROOT / "tests" / "fixtures" / "pages").glob("*.html")
)


def one_tag(count: int, attribute: Callable[[int], str] = lambda i: f"a{i}=1", tag: str = "div") -> bytes:
    return f"<!doctype html><{tag} {' '.join(attribute(i) for i in range(count))}>x</{tag}>".encode()


# name -> page; each takes lexbor well over 50 ms (measured 0.1-0.8 s), so each must be refused.
BOMBS: dict[str, bytes] = {
    "distinct names": one_tag(20_000),  # 168 KB, 0.8 s
    "names without values": one_tag(20_000, lambda i: f"a{i}"),  # 128 KB, 0.7 s
    "quoted values with no blanks": one_tag(12_000, lambda i: f'a{i}="1"').replace(b" ", b""),
    "slash separators": one_tag(12_000, lambda i: f"a{i}").replace(b" ", b"/"),
    "control-byte names": one_tag(12_000, lambda i: "\x01" + chr(0x41 + i % 26) + str(i)),
    "quotes and > in values": one_tag(12_000, lambda i: f"a{i}='>'"),
    "ten tags of 3,000": b"".join(one_tag(3_000, lambda i: f"b{i}", "span") for _ in range(10)),
    "in an end tag": b"<p>x</p " + " ".join(f"a{i}" for i in range(40_000)).encode() + b">",
}


def max_attributes(html: bytes) -> tuple[int, int]:
    """(most attributes on one element, sum of their squares) as lexbor parses ``html``. <html> and
    <body> are left out: the tree builder merges into them the attributes of every later <html> or
    <body> tag, so they can hold more than any one tag."""
    counts = [
        len(node.attributes)
        for node in LexborHTMLParser(html).root.traverse()  # type: ignore[union-attr]
        if node.tag not in ("html", "body")
    ]
    return max(counts, default=0), sum(count * count for count in counts)


def assert_refused_by_the_pre_pass(
    html: bytes, name: str, *, within_s: float, clock: Callable[[], float] = time.perf_counter
) -> None:
    """The rewriter refuses ``html`` for its attributes, from the estimate alone, within `within_s` of `clock`."""
    started = clock()
    with pytest.raises(RewriteError) as error:
        Page(html, URL)
    assert clock() - started < within_s, name  # a linear pre-pass, not the parse
    assert error.value.code == "page_too_complex"
    assert "attributes" in str(error.value)
    assert estimate_attributes(html).work > LIMIT


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_are_refused_quickly_by_the_rewriter(name: str) -> None:
    assert_refused_by_the_pre_pass(BOMBS[name], name, within_s=0.5)


def test_the_fast_path_for_pages_with_few_tags_checks_attributes_too() -> None:
    # Under 128 KB with few "<", the nesting estimate is skipped: the attributes still get theirs.
    html = one_tag(15_000, lambda i: f"a{i}")
    assert len(html) < 128 * 1024
    with pytest.raises(RewriteError, match="attributes"):
        Page(html, URL)
    # ...and the limit is what decides: trusted input (None) parses, slowly.
    assert Page(html, URL, RewriteOptions(max_attribute_work=None)).images() == []


def test_the_limit_sits_near_50_ms_of_parsing() -> None:
    # 4,000 distinct attributes (about 30 ms to parse) pass; 6,000 (about 75 ms) are refused.
    assert Page(one_tag(4_000), URL).images() == []
    with pytest.raises(RewriteError):
        Page(one_tag(6_000), URL)


def test_repeated_names_are_counted_too() -> None:
    # lexbor drops repeated names cheaply, but the estimate cannot tell names apart: it over-counts.
    assert estimate_attributes(one_tag(100, lambda i: "a")).most == 100


@pytest.mark.parametrize("path", REAL_PAGES, ids=lambda path: path.name)
def test_real_pages_pass_by_a_wide_margin(path: Path) -> None:
    data = path.read_bytes()
    estimate = estimate_nesting(data).attributes
    assert estimate == estimate_attributes(data)
    assert estimate.work * 5 < LIMIT, estimate
    assert estimate.most >= max_attributes(data)[0]
    Page(data, URL).images()  # not refused


def test_many_ordinary_tags_pass() -> None:
    # 4.5 MB of short tags: the bound must follow attributes, not bytes. Two per tag here, counted as
    # nine: every "/" and blank in a quoted URL may separate names, and each quote after "=" may close a
    # value right before one.
    html = "".join(f'<img src="/i/{n}.png" srcset="/i/{n}@2x.png 2x">' for n in range(100_000)).encode()
    estimate = estimate_nesting(html).attributes
    assert estimate.most == 9 and estimate.work == 81 * 100_000 < LIMIT / 3


def test_the_repo_fixtures_are_among_the_real_pages() -> None:
    # ../shared/pages is read when present; the repo's own fixtures always are.
    assert len([path for path in REAL_PAGES if path.is_relative_to(ROOT)]) >= 5


# Bytes that steer lexbor's tokenizer: tag and comment openers, quotes, separators, "=", NUL and control
# bytes, raw-text and foreign elements, and a few names.
PIECES = [
    "<", ">", "/", "=", '"', "'", " ", "\n", "\t", "\f", "\r", "\x00", "\x01", "\x0b", "a", "b", "x1", "é",
    "<div", "<p ", "</p", "<b ", "<a", "<!--", "-->", "<!", "<?", "<svg", "<math", "<script>", "</script>",
    "<style>", "<textarea>", "<title>", "<html ", "<body ", "<template>", "<table>", "<select>", "&lt;",
    " c=d", " e='f'", ' g="h"', "=\"", "='", "/>", "<![CDATA[", "]]>", "<plaintext>", "<xmp>", "<noscript>",
    # Formatting elements, and what closes them implicitly: their clones (issue #4) carry their attributes.
    "<i ", "<a ", "<font ", "<nobr ", "<u>", "</b>", "</a>", "</i>", "</p><p>", "</p>", "<div>", "</div>", "x",
    "<span>", "</span>", "<td>", "<object>", "<marquee>", "</table>", "<li>",
]  # fmt: skip
SNIPPETS = [path.read_bytes() for path in REAL_PAGES if path.stat().st_size < 5_000]


def assert_upper_bound(html: bytes) -> None:
    most, work = max_attributes(html)
    estimate = estimate_attributes(html)
    assert estimate.most >= most, (estimate, most, html)
    assert estimate.work >= work, (estimate, work, html)
    assert estimate_nesting(html).attributes == estimate


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=60))
def test_estimate_bounds_lexbor_on_random_markup(pieces: list[str]) -> None:
    assert_upper_bound("".join(pieces).encode("utf-8", "surrogatepass"))


# Tags built from attribute-shaped pieces: separators (or none, after a quoted value), odd names and
# values, quotes holding ">" and blanks, then some ending (or none: end of file inside the tag).
ATTRIBUTE = st.tuples(
    st.sampled_from(["", " ", "\n", "\t", "\f", "/", "  ", " / "]),
    st.sampled_from(["a", "b", "c1", "=", "==", "\x00", "\x01", "é", '"', "'", "a<b", "a'b"]),
    st.sampled_from(["", "=1", "='1'", '="1"', " = '>'", '=" a b "', "=a/b", "='\"'", '="\'"', "=>", "=", "= x"]),
).map("".join)
TAG = st.tuples(
    st.sampled_from(
        ["<p", "<div", "</p", "<b", "<svg", "<html", "<body", "<math", "<td", "<a", "<i", "<font", "<nobr", "</b"]
    ),
    st.lists(ATTRIBUTE, max_size=12),
    st.sampled_from([">", "/>", " >", "", "x"]),
).map(lambda parts: parts[0] + "".join(parts[1]) + parts[2])
MARKUP = st.lists(st.one_of(TAG, st.sampled_from(PIECES)), max_size=16).map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MARKUP)
def test_estimate_bounds_lexbor_on_random_tags(html: str) -> None:
    assert_upper_bound(html.encode())


@pytest.mark.parametrize(
    ("html", "attributes"),
    [
        (b'<p a="1"b="2"c>', 3),  # no blank after a quoted value
        (b"<p a/b/c/d>", 4),  # "/" separates
        (b"<p a='>' b c>", 3),  # ">" inside quotes
        (b"<p \x01 \x02 \x03>", 3),  # control bytes are names
        (b"<p a b c", 0),  # end of file inside the tag: lexbor drops it (the estimate still counts 3)
        (b"<p ='x' =y>", 1),  # "=" starts a name, then (after a blank) a value
    ],
)
def test_tricky_tags(html: bytes, attributes: int) -> None:
    assert max_attributes(html)[0] == attributes
    assert_upper_bound(html)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_estimate_bounds_lexbor_on_mutated_real_markup(data: st.DataObject) -> None:
    html = bytearray(data.draw(st.sampled_from(SNIPPETS)))
    for _ in range(data.draw(st.integers(1, 12))):
        at = data.draw(st.integers(0, len(html)))
        if data.draw(st.booleans()):
            html[at:at] = data.draw(st.sampled_from(PIECES)).encode()
        else:
            del html[at : at + data.draw(st.integers(1, 8))]
    assert_upper_bound(bytes(html))


# Through the real HTTP page proxy.


def bomb_upstream() -> web.Application:
    # The formatting-element clone bomb of issue #4: one <b> of 4,000 attributes cloned 10,000 times (15 s).
    clones = ("<p><b " + " ".join(f"a{i}=1" for i in range(4000)) + ">x" + "</p><p>y" * 10000).encode()
    pages = {"bomb": BOMBS["distinct names"], "clones": clones, "real": SNIPPETS[0]}

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=pages[request.match_info["name"]], content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}.html", page)
    return app


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    async with serving_on_loopback(bomb_upstream()) as base:
        yield base


@pytest_asyncio.fixture
async def client(aiohttp_client: Any) -> Client:
    values = {"allow_private_networks": False, "allowed_networks": ("127.0.0.1/32",)}
    made: Awaitable[Client] = aiohttp_client(create_app(service_settings(**values), classifier=SaturationHeuristic()))
    return await made


@pytest.mark.asyncio
@pytest.mark.parametrize("bomb", ["bomb", "clones"])
async def test_the_page_proxy_refuses_an_attribute_bomb_quickly(client: Client, upstream: str, bomb: str) -> None:
    started = time.perf_counter()
    response = await client.get("/api/v1/page", params={"url": f"{upstream}/{bomb}.html", "deadline_ms": "0"})
    body = await response.json()
    assert response.status == 413, body
    assert body["error"]["code"] == "page_too_complex"
    assert "attributes" in body["error"]["message"]
    assert time.perf_counter() - started < 2.0  # parsing either would take 0.8 s (15 s) of CPU on its own

    real = await client.get("/api/v1/page", params={"url": upstream + "/real.html", "deadline_ms": "0"})
    assert real.status == 200, (await real.text())[:300]
    assert (await client.get("/healthz")).status == 200
