"""proxy.rewrite (with proxy.urls, proxy.sanitize, proxy.nesting): finding and marking the images of real
page shapes, URLs, sanitising, robustness.

Runs over the hand-written fixtures in tests/fixtures/pages and, when a development checkout has them,
over the real Wikipedia pages in ../shared/pages (skipped otherwise).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from selectolax.lexbor import LexborDocumentOptions, LexborHTMLParser, LexborNode

from proxy import rewrite as rewrite_module
from proxy import sanitize
from proxy.nesting import estimate_attributes, estimate_nesting
from proxy.rewrite import (
    ImageRef,
    Mark,
    Page,
    RewriteError,
    RewriteOptions,
    find_images,
    find_summary_images,
    rewrite_page,
    rewrite_summary,
)
from proxy.urls import Candidate, Resolver, parse_srcset, serialize_srcset, url_scheme

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pages"
SHARED_PAGES = Path(__file__).resolve().parents[3] / "shared" / "pages"

# The URL each fixture would have been fetched from.
FIXTURE_URLS = {
    "parsoid.html": "https://en.wikipedia.org/api/rest_v1/page/html/Lighthouse",
    "mobile-html.html": "https://en.wikipedia.org/api/rest_v1/page/mobile-html/Harbour",
    "mobilefrontend.html": "https://en.m.wikipedia.org/w/api.php?action=parse&page=Owl&format=json",
    "rtl.html": "https://ar.wikipedia.org/api/rest_v1/page/html/%D8%B1%D9%8A%D8%A7%D8%B6%D9%8A%D8%A7%D8%AA",
    "picture.html": "https://www.example.com/gallery/index.html",
    "manual.html": "https://example.org/manual/",
    "hostile.html": "https://example.org/hostile/page.html",
}
SHARED_URLS = {
    "arwiki-Mathematics.parsoid-page-html.html": "https://ar.wikipedia.org/api/rest_v1/page/html/Mathematics",
    "cswiki-NATO.mobile-html-fragment.html": "https://cs.wikipedia.org/api/rest_v1/page/mobile-html/NATO",
    "enwiki-Cat.mobilefrontend-parse-lazy.html": "https://en.m.wikipedia.org/wiki/Cat",
    "enwiki-Dog.mobile-html.html": "https://en.wikipedia.org/api/rest_v1/page/mobile-html/Dog",
    "enwiki-Dog.parsoid-page-html.html": "https://en.wikipedia.org/api/rest_v1/page/html/Dog",
    "enwiki-MCS_Test_Frankenstein.mobile-html.html": "https://en.wikipedia.org/api/rest_v1/page/mobile-html/MCS",
    "zhwiki-Cat.mobilefrontend-parse-lazy.html": "https://zh.m.wikipedia.org/wiki/Cat",
}
URL_ATTRIBUTES = ("href", "src", "srcset", "data-src", "data-srcset", "poster", "action", "formaction", "cite")
# Not shown as text by a browser (or removed by the sanitiser on purpose).
INVISIBLE = ("script", "style", "template", "iframe", "noembed", "noframes", "textarea")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def needs_shared(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_PAGES / name).exists(), reason="no ../shared/pages checkout")


def shared_pages() -> list[pytest.ParameterSet]:
    return [pytest.param(name, marks=needs_shared(name)) for name in sorted(SHARED_URLS)]


def every_page() -> Iterator[pytest.ParameterSet]:
    for name in sorted(FIXTURE_URLS):
        yield pytest.param(FIXTURES / name, FIXTURE_URLS[name], id=name)
    for name in sorted(SHARED_URLS):
        yield pytest.param(SHARED_PAGES / name, SHARED_URLS[name], id=f"shared/{name}", marks=needs_shared(name))


def parse(html: str) -> LexborHTMLParser:
    """Parses as the module does: scripting off, fragments as fragments."""
    fragment = re.search(r"<(?:!doctype|html|head|body)[\t\n\f\r />]", html, re.IGNORECASE) is None
    return LexborHTMLParser(html, is_fragment=fragment, options=LexborDocumentOptions.WO_EVENTS)


def elements(tree: LexborHTMLParser) -> Iterator[LexborNode]:
    root = tree.root
    if root is not None:
        yield from (node for node in root.traverse() if node.is_element_node)


def visible_text(html: str) -> str:
    """The words a browser without scripts shows (nbsp counts as a space)."""
    tree = parse(html)
    for name in INVISIBLE:
        for node in tree.css(name):
            node.decompose()
    return " ".join(tree.text(separator=" ").split())


def marks_for(images: list[ImageRef], *, invert: bool = True) -> dict[str, Mark]:
    return {
        image.url: Mark(invert=invert if n % 3 else not invert, p_invert=0.97312, model="test-model")
        for n, image in enumerate(images)
        if image.manual is None
    }


def canonical(page_url: str, ref: str) -> str | None:
    """The classification URL of an image URL found in rewritten output."""
    return Resolver(yarl.URL(page_url)).canonical(ref)


def marked(tree: LexborHTMLParser) -> list[LexborNode]:
    return [node for node in elements(tree) if "data-invertornot" in node.attributes]


def classes(node: LexborNode) -> list[str]:
    return (node.attributes.get("class") or "").split()


def by_id(tree: LexborHTMLParser, identifier: str) -> LexborNode:
    node = tree.css_first(f"#{identifier}")
    assert node is not None, identifier
    return node


# --- srcset and URLs --------------------------------------------------------------------------------


def test_srcset_candidates_and_descriptors() -> None:
    assert parse_srcset("a.png 1x, b.png 2x,c.png 320w , d.png") == [
        Candidate("a.png", "1x"),
        Candidate("b.png", "2x"),
        Candidate("c.png", "320w"),
        Candidate("d.png", ""),
    ]
    assert [c.size() for c in parse_srcset("a 1.5x, b 320w, c, d 0x, e 2x 3x, f 10.5w, g 2q, h 100w 50h")] == [
        ("x", 1.5),
        ("w", 320.0),
        ("x", 1.0),
        None,
        None,
        None,
        None,
        ("w", 100.0),
    ]


def test_srcset_commas_belong_to_urls_unless_trailing() -> None:
    assert parse_srcset("/img/a,b.png 1x, /img/c.png,, /d.png 2x") == [
        Candidate("/img/a,b.png", "1x"),
        Candidate("/img/c.png", ""),
        Candidate("/d.png", "2x"),
    ]
    # A descriptor list ends at a comma outside parentheses.
    assert parse_srcset("a.png 1x (x, y), b.png") == [Candidate("a.png", "1x (x, y)"), Candidate("b.png", "")]
    assert parse_srcset(",,, ,") == [] and parse_srcset("") == []


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("ab,/ .:()12xw\t\n?#%")), max_size=80) | st.text(max_size=40))
def test_srcset_never_fails_and_reserialises_to_itself(value: str) -> None:
    candidates = parse_srcset(value)
    assert all(c.url and not c.url.endswith(",") and not set(c.url) & set("\t\n\f\r ") for c in candidates)
    assert parse_srcset(serialize_srcset(candidates)) == candidates


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.builds(lambda url, descriptor: url + descriptor,
                          st.text(alphabet=st.sampled_from(list("ab/.:,()%")), min_size=1, max_size=8),
                          st.sampled_from(["", " 1x", " 2x", " 1.5x", " 320w", " x", " (1x", " 2x 3x"])),
                max_size=5).map(", ".join))  # fmt: skip
def test_plain_srcset_reads_as_the_standard_says(value: str) -> None:
    """Plain srcset values ("a.png 1x, b.png 2x") are read by splitting; a leading blank makes the
    general parser read them, which skips it: both must agree."""
    for limit in (None, 1, 3):
        assert parse_srcset(value, limit) == parse_srcset(" " + value, limit), value


def test_srcset_with_many_candidates_is_linear() -> None:
    value = ", ".join(f"https://example.org/img/{n}.png {n + 1}w" for n in range(20_000))
    started = time.perf_counter()
    assert len(parse_srcset(value)) == 20_000
    assert len(parse_srcset(value, limit=64)) == 64
    assert time.perf_counter() - started < 5  # linear: ~0.1 s; quadratic would be minutes


BASE = yarl.URL("https://en.wikipedia.org/wiki/Lighthouse?oldid=5#History")
REFERENCE = st.one_of(
    st.text(alphabet=st.sampled_from(list("abAB09/.?#%:=@&;_~-+ ")), max_size=24),
    st.builds(lambda head, tail: head + tail, st.sampled_from(["//", "/", "./", "../", "?", "https:", "http:"]),
              st.text(alphabet=st.sampled_from(list("ab/.?#=")), max_size=16)),
)  # fmt: skip


@settings(max_examples=250, deadline=None, database=None)
@given(REFERENCE)
def test_fast_absolute_means_what_yarl_means(ref: str) -> None:
    """`Resolver.absolute` takes string shortcuts; a browser (like yarl) must read the result as the
    reference resolved against the base."""
    resolver = Resolver(BASE)
    try:
        parsed = yarl.URL(ref.strip())
        # A base URL's fragment never carries over (yarl keeps it for query-only references).
        expected = BASE.with_fragment(None).join(parsed)
    except ValueError:
        return
    result = resolver.absolute(ref)
    if ref.strip() == "" or ref.strip().startswith("#"):
        assert result == ref.strip()
        return
    if parsed.scheme and not parsed.scheme[0].isalpha():
        return  # "0:x" is a relative path to a browser (a scheme starts with a letter); yarl disagrees
    if ref.strip().startswith("?") and not parsed.raw_query_string:
        return  # yarl reads "?" as no reference at all (the URL standard: an empty query)
    assert result is not None
    actual = yarl.URL(result)
    if actual.scheme in ("http", "https") and not actual.raw_host:
        return  # no host: not a URL to a browser; yarl has its own fallbacks
    assert actual == expected


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.builds(lambda head, tail: head + tail, st.sampled_from(["/", "./", "//", "/\\", "././"]),
                          st.text(alphabet=st.sampled_from(list("ab/.?#=&\"'<> %")), max_size=12)),
                min_size=1, max_size=5))  # fmt: skip
def test_links_made_absolute_in_the_serialised_page_mean_the_same(refs: list[str]) -> None:
    """The commonest links are made absolute on the serialised page, by string concatenation."""
    page = "".join(f"<a href='{ref.replace(chr(39), '&#39;')}'>{n}</a> text href=\"/x\" " for n, ref in enumerate(refs))
    tree = parse(rewrite_page(page, str(BASE), {}))
    assert visible_text(tree.html or "").count('href="/x"') == len(refs)  # text is left alone
    for node, ref in zip(tree.css("a"), refs, strict=True):
        actual = yarl.URL(node.attributes["href"] or "")
        if not actual.raw_host:
            continue  # "//" with no host: not a URL to a browser; yarl has its own fallbacks
        expected = BASE.with_fragment(None).join(yarl.URL(ref.replace("\\", "/")))
        assert actual == expected, ref


def test_absolute_handles_each_reference_shape() -> None:
    resolver = Resolver(yarl.URL("https://en.wikipedia.org/wiki/"))
    cases = {
        "./Tower": "https://en.wikipedia.org/wiki/Tower",
        "//upload.wikimedia.org/a.png": "https://upload.wikimedia.org/a.png",
        "/w/index.php?title=X": "https://en.wikipedia.org/w/index.php?title=X",
        "../w/index.php": "https://en.wikipedia.org/w/index.php",
        "?action=history": "https://en.wikipedia.org/wiki/?action=history",
        "#cite_note-1": "#cite_note-1",
        "mailto:someone@example.org": "mailto:someone@example.org",
        "  ./Tower\n": "https://en.wikipedia.org/wiki/Tower",
        "\\\\upload.wikimedia.org\\b.png": "https://upload.wikimedia.org/b.png",
        "./ملف:Euclid.jpg": "https://en.wikipedia.org/wiki/ملف:Euclid.jpg",
    }
    for ref, expected in cases.items():
        assert resolver.absolute(ref) == expected, ref


def test_canonical_is_yarl_join_without_fragment_for_http_only() -> None:
    resolver = Resolver(yarl.URL("https://en.wikipedia.org/wiki/Lighthouse"))
    assert resolver.canonical("//upload.wikimedia.org/a/b%27c.png#x") == str(
        yarl.URL("https://en.wikipedia.org/wiki/Lighthouse").join(yarl.URL("//upload.wikimedia.org/a/b%27c.png"))
    )
    for ref in ("data:image/png;base64,AAAA", " DATA:image/gif,x", "mailto:a@b", "javascript:x", "ftp://h/x.png"):
        assert resolver.canonical(ref) is None, ref
    with pytest.raises(ValueError, match="absolute"):
        Resolver(yarl.URL("/relative/only"))


def test_canonical_urls_are_shared_between_pages_of_one_base_only() -> None:
    first, second = Resolver(yarl.URL("https://a.example/x/")), Resolver(yarl.URL("https://a.example/x/"))
    other = Resolver(yarl.URL("https://b.example/y/"))
    for resolver in (first, second, first):
        assert resolver.canonical("img.png#f") == "https://a.example/x/img.png"
    assert other.canonical("img.png") == "https://b.example/y/img.png"
    assert first.canonical("javascript:x") is None and first.canonical("x" * 5000) is not None


def test_unsafe_urls_and_styles() -> None:
    for value in ("javascript:alert(1)", " JaVaScRiPt:x", "java\nscript:x", "\x01vbscript:x", "data:text/html,<b>"):
        assert sanitize.is_unsafe_url("href", value), value
    assert sanitize.is_unsafe_url("src", "data:text/html;base64,AAAA")
    assert not sanitize.is_unsafe_url("src", "data:image/png;base64,AAAA")
    assert sanitize.is_unsafe_url("href", "data:image/png;base64,AAAA")  # navigating to data: is not an image
    for value in ("./a", "https://x/", "//x/y", "#top", "mailto:a@b", "javascript-tutorial.html"):
        assert not sanitize.is_unsafe_url("href", value), value
    for style in ("width: expression(alert(1))", "background:url(JAVASCRIPT:x)", "x: \\65 xpression(1)",
                  "behavior: url(a.htc)", "-moz-binding: url(x)", "a: java/**/script:x"):  # fmt: skip
        assert sanitize.is_unsafe_style(style), style
    assert not sanitize.is_unsafe_style("color: red; background: url(https://x/a.png)")


def test_event_handlers_are_removed_from_tags_only() -> None:
    html = (
        '<p onclick="a()" title="say onclick=&quot;x&quot;">Text onclick="kept" <b ONMOUSEOVER=x>b</b>'
        "<img src=x onerror=y><svg><a onload='z'>s</a></svg></p><p>more one=\"text\" words</p>"
    )
    stripped = rewrite_page(html, "https://example.org/", {})
    attributes = [name for node in elements(parse(stripped)) for name in node.attributes]
    assert not [name for name in attributes if name.startswith("on")]
    assert 'Text onclick="kept"' in stripped and 'one="text"' in stripped and "title=" in stripped


# --- finding images -----------------------------------------------------------------------------------


def find(name: str, **kwargs: object) -> list[ImageRef]:
    return find_images(fixture(name), FIXTURE_URLS[name], **kwargs)  # type: ignore[arg-type]


def test_find_images_in_parsoid_html() -> None:
    images = find("parsoid.html")
    thumb = "https://upload.wikimedia.org/wikipedia/commons/thumb"
    assert [image.url for image in images] == [
        f"{thumb}/a/a1/Lighthouse_photo.jpg/220px-Lighthouse_photo.jpg",
        f"{thumb}/b/b2/Fresnel_lens_diagram.svg/300px-Fresnel_lens_diagram.svg.png",
        "https://upload.wikimedia.org/wikipedia/commons/7/74/Red_Pencil_Icon.png",
        f"{thumb}/a/a5/Info_icon.svg/18px-Info_icon.svg.png",
        f"{thumb}/6/65/Flag_of_Testland.svg/23px-Flag_of_Testland.svg.png",
    ]
    photo, diagram, pencil, info, flag = images
    assert photo.manual is None and photo.width == 220 and photo.height == 147
    assert set(photo.urls) == {
        f"{thumb}/a/a1/Lighthouse_photo.jpg/{size}px-Lighthouse_photo.jpg" for size in (220, 330, 440)
    }
    assert (pencil.manual, pencil.markup) == (False, "notheme")  # notheme on the <th>
    assert (info.manual, info.markup) == (True, "skin-invert")  # skin-invert on the wrapping span
    assert flag.count == 2 and diagram.count == 1


def test_find_images_in_mobile_html_placeholders() -> None:
    images = find("mobile-html.html")
    assert [(image.url.rsplit("/", 1)[1], image.width, image.height, image.manual) for image in images] == [
        ("260px-Harbour_aerial.jpg", 260, 173, None),
        ("640px-Harbour_plan.png", 640, 480, None),
        ("120px-Harbour_chart.svg.png", 120, 90, True),  # data-class="skin-invert-image": its <img> will say so
        ("30px-Commons-logo.svg.png", 30, 40, None),
    ]


def test_find_images_pairs_noscript_image_with_its_placeholder() -> None:
    images = find("mobilefrontend.html")
    names = [image.url.rsplit("/", 1)[1] for image in images]
    assert names == [
        "15px-OOjs_UI_icon_edit-ltr.svg.png",
        "220px-Barn_owl.jpg",
        "220px-Owl_skull.png",
        "250px-Owl_in_flight.jpg",
    ]
    assert images[0].manual is True
    skull = images[2]
    assert skull.count == 1  # the <noscript><img> and the placeholder are one occurrence
    assert len(skull.urls) == 3  # src, and the placeholder's 1.5x and 2x


def test_find_images_picture_base_and_lazy_loading() -> None:
    images = {image.url: image for image in find("picture.html")}
    site = "https://www.example.com/assets"
    bay = images[f"{site}/v2/photos/bay.jpg"]
    assert set(bay.urls) == {f"{site}/v2/photos/{n}" for n in ("bay.jpg", "bay.avif", "bay@2x.avif", "bay.webp")}
    chart = images[f"{site}/v2/charts/sales.png"]
    assert (chart.manual, chart.markup) == (False, "prefers-color-scheme")  # the site has a dark version
    assert "https://cdn.example.net/img/map,v=2/medium.png" not in images  # src wins over srcset...
    assert "https://cdn.example.net/img/map,v=2/small.png" in images  # ...when present
    assert f"{site}/shared/diagram.png" in images  # data-src of a lazy loader, base href applied
    assert "https://images.example.com/logo.png?size=64&v=3" in images  # fragment dropped


def test_srcset_choice_is_closest_to_the_displayed_size() -> None:
    page = (
        '<img srcset="s.png 320w, m.png 640w, l.png 1280w" width="600">'
        '<img srcset="a.png 1x, b.png 2x">'
        '<span class="lazy-image-placeholder" data-srcset="x1.png 1x, x2.png 2x" data-width="100"></span>'
        '<img srcset="w1.png 100w, w2.png 300w, w3.png 2000w">'
    )
    urls = [image.url.rsplit("/", 1)[1] for image in find_images(page, "https://example.org/")]
    assert urls == ["m.png", "a.png", "x1.png", "w2.png"]


def test_manual_markup_is_reported() -> None:
    tree = parse(fixture("manual.html"))
    manual = {image.url.rsplit("/", 1)[1]: image.manual for image in find("manual.html")}
    expected = {
        "m-invert": True,
        "m-invert-not": False,
        "m-invert-auto": True,
        "m-invert-not-auto": False,
        "m-skin-invert-image": True,
        "m-ancestor": True,
        "m-nearest": False,  # the nearest marked ancestor decides
        "m-notheme": False,
        "m-both": False,  # "don't invert" wins on one element
        "m-plain": None,  # one unmarked occurrence is enough to need a verdict
    }
    for identifier, value in expected.items():
        name = (by_id(tree, identifier).attributes.get("src") or "").rsplit("/", 1)[1]
        assert manual[name] is value, identifier


def test_max_images_keeps_the_first_distinct_images() -> None:
    all_images = find("parsoid.html")
    assert find("parsoid.html", max_images=2) == all_images[:2]
    assert find("parsoid.html", max_images=0) == []
    html = fixture("parsoid.html")
    url = FIXTURE_URLS["parsoid.html"]
    capped = find_images(html, url, max_images=2)
    output = parse(rewrite_page(html, url, marks_for(capped)))
    assert {canonical(url, node.attributes["src"] or "") for node in marked(output)} == {i.url for i in capped}


# --- rewriting ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_every_image_is_marked_exactly_once(path: Path, url: str) -> None:
    html = path.read_text(encoding="utf-8")
    images = find_images(html, url)
    marks = marks_for(images)
    output = parse(rewrite_page(html, url, marks))
    ours = {"invert", "invert-not"}
    seen: set[str] = set()
    for node in marked(output):
        names = classes(node)
        assert len([name for name in names if name in ours]) == 1, node.html
        verdict = node.attributes["data-invertornot"]
        assert verdict in ("invert", "invert-not") and verdict in names
        assert node.attributes["data-invertornot-p"] == "0.973"
        assert node.attributes["data-invertornot-model"] == "test-model"
        key = canonical(url, node.attributes.get("src") or "")
        key = next(image.url for image in images if key in image.urls)
        assert (verdict == "invert") == marks[key].invert
        seen.add(key)
    assert seen == set(marks)  # every classified image is shown marked somewhere
    manual_urls = {image.url for image in images if image.manual is not None}
    for node in output.css("img"):
        if canonical(url, node.attributes.get("src") or "") in manual_urls:
            assert "data-invertornot" not in node.attributes


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_text_is_unchanged(path: Path, url: str) -> None:
    html = path.read_text(encoding="utf-8")
    output = rewrite_page(html, url, marks_for(find_images(html, url)))
    assert visible_text(output) == visible_text(html)


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_urls_are_absolute_and_base_is_gone(path: Path, url: str) -> None:
    html = path.read_text(encoding="utf-8")
    tree = parse(rewrite_page(html, url, {}))
    assert tree.css_first("base") is None
    for node in elements(tree):
        for name in URL_ATTRIBUTES:
            value = node.attributes.get(name)
            if not value:
                continue
            refs = [c.url for c in parse_srcset(value)] if name.endswith("srcset") else [value]
            for ref in refs:
                assert ref.startswith("#") or url_scheme(ref) in ("https", "http", "mailto", "data", "mw-data"), ref
                assert not ref.startswith(("http", "//")) or yarl.URL(ref).absolute, (name, ref)


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_rewriting_is_stable(path: Path, url: str) -> None:
    """Rewriting the output again changes nothing: marks are replaced, not added to."""
    html = path.read_text(encoding="utf-8")
    marks = marks_for(find_images(html, url))
    once = rewrite_page(html, url, marks)
    assert rewrite_page(once, url, marks) == once


def test_page_parses_once_for_images_and_rewrite() -> None:
    html, url = fixture("parsoid.html"), FIXTURE_URLS["parsoid.html"]
    page = Page(html, url)
    first_two = page.images(max_images=2)
    everything = page.images()
    assert everything[:2] == first_two and everything == find_images(html, url)
    output = page.rewrite(marks_for(everything))
    assert output == rewrite_page(html, url, marks_for(everything))
    with pytest.raises(RuntimeError):
        page.rewrite({})


def test_parsoid_links_resolve_against_its_base() -> None:
    tree = parse(rewrite_page(fixture("parsoid.html"), FIXTURE_URLS["parsoid.html"], {}))
    links = {node.text(): node.attributes["href"] for node in tree.css("a")}
    assert links["tower"] == "https://en.wikipedia.org/wiki/Tower"
    assert links["[1]"] == "https://en.wikipedia.org/wiki/Lighthouse#cite_note-1"
    assert links["history"] == "https://en.wikipedia.org/w/index.php?title=Lighthouse&action=history"
    assert links["the figure"] == "#mwBg"  # same-document: still points into the page
    assert links["the register"] == "https://example.org/lights?a=1&b=2"
    stylesheet = tree.css_first("link[rel=stylesheet]")
    assert (
        stylesheet is not None
        and stylesheet.attributes["href"] == "https://en.wikipedia.org/w/load.php?modules=site.styles&only=styles"
    )


def test_second_pass_replaces_marks() -> None:
    html, url = fixture("parsoid.html"), FIXTURE_URLS["parsoid.html"]
    images = find_images(html, url)
    photo = images[0].url
    first = rewrite_page(html, url, {photo: Mark(invert=True, p_invert=0.9, model="a")})
    second = parse(rewrite_page(first, url, {photo: Mark(invert=False, p_invert=0.1)}))
    (node,) = marked(second)
    assert classes(node).count("invert-not") == 1 and "invert" not in classes(node)
    assert node.attributes["data-invertornot-p"] == "0.100"
    assert "data-invertornot-model" not in node.attributes
    # Our own earlier mark is not mistaken for manual markup.
    assert find_images(first, url)[0].manual is None


def test_pending_images_are_marked_not_to_invert() -> None:
    html, url = fixture("parsoid.html"), FIXTURE_URLS["parsoid.html"]
    photo = find_images(html, url)[0].url
    tree = parse(rewrite_page(html, url, {photo: Mark(invert=True, p_invert=None, model=None, pending=True)}))
    (node,) = marked(tree)
    assert "invert-not" in classes(node) and "invert" not in classes(node)
    assert node.attributes["data-invertornot"] == "pending"
    assert "data-invertornot-pending" in node.attributes and "data-invertornot-p" not in node.attributes


def test_manual_markup_is_never_overridden() -> None:
    html, url = fixture("manual.html"), FIXTURE_URLS["manual.html"]
    every_url = {(n.attributes.get("src") or ""): Mark(invert=True) for n in parse(html).css("img")}
    tree = parse(rewrite_page(html, url, every_url))
    original = parse(html)
    for node in tree.css("img"):
        identifier = node.attributes["id"] or ""
        if identifier == "m-plain":
            assert "data-invertornot" in node.attributes
        else:
            assert "data-invertornot" not in node.attributes, identifier
            assert classes(node) == classes(by_id(original, identifier)), identifier


def test_images_without_a_mark_are_left_alone() -> None:
    for name, url in FIXTURE_URLS.items():
        tree = parse(rewrite_page(fixture(name), url, {}))
        assert marked(tree) == [], name


def test_class_names_are_configurable() -> None:
    html = '<img src="https://e.org/a.png"><img class="dark-invert" src="https://e.org/b.png">'
    options = RewriteOptions(invert_class="dark-invert", invert_not_class="dark-keep")
    images = find_images(html, "https://e.org/", options=options)
    assert [(image.url, image.manual) for image in images] == [
        ("https://e.org/a.png", None),
        ("https://e.org/b.png", True),
    ]
    tree = parse(rewrite_page(html, "https://e.org/", {"https://e.org/a.png": Mark(invert=False)}, options))
    assert [classes(node) for node in tree.css("img")] == [["dark-keep"], ["dark-invert"]]


def test_lazy_placeholders_become_plain_images() -> None:
    for name in ("mobile-html.html", "mobilefrontend.html"):
        url = FIXTURE_URLS[name]
        html = fixture(name)
        tree = parse(rewrite_page(html, url, marks_for(find_images(html, url))))
        assert not tree.css(".pcs-lazy-load-placeholder, .lazy-image-placeholder, noscript"), name
        for node in tree.css("img"):
            assert (node.attributes.get("src") or "").startswith("https://"), node.html
    tree = parse(rewrite_page(fixture("mobile-html.html"), FIXTURE_URLS["mobile-html.html"], {}))
    plan = next(n for n in tree.css("img") if "Harbour_plan" in (n.attributes.get("src") or ""))
    assert plan.attributes["class"] == "pcs-widen-image-override"  # data-class, as pcs would set it
    assert plan.attributes["width"] == "640" and plan.attributes["data-file-width"] == "997"
    aerial = next(n for n in tree.css("img") if "Harbour_aerial" in (n.attributes.get("src") or ""))
    assert aerial.attributes["alt"] == "Aerial view" and "520px" in (aerial.attributes.get("srcset") or "")
    owl = parse(rewrite_page(fixture("mobilefrontend.html"), FIXTURE_URLS["mobilefrontend.html"], {}))
    skull = next(n for n in owl.css("img") if "Owl_skull" in (n.attributes.get("src") or ""))
    assert "440px-Owl_skull.png 2x" in (skull.attributes.get("srcset") or "")  # taken from the placeholder


def test_lazy_placeholders_are_marked_when_kept() -> None:
    options = RewriteOptions(eager_images=False, sanitize=False)
    for name in ("mobile-html.html", "mobilefrontend.html"):
        url = FIXTURE_URLS[name]
        html = fixture(name)
        marks = marks_for(find_images(html, url))
        tree = parse(rewrite_page(html, url, marks, options))
        placeholders = tree.css(".pcs-lazy-load-placeholder, .lazy-image-placeholder")
        assert placeholders
        for node in placeholders:
            if "skin-invert-image" in (node.attributes.get("data-class") or ""):
                continue  # manual
            verdict = node.attributes["data-invertornot"]
            # The class survives lazy loading: the loader copies data-class onto the new <img>.
            assert verdict in classes(node) and verdict in (node.attributes.get("data-class") or "").split()
    tree = parse(rewrite_page(fixture("mobilefrontend.html"), FIXTURE_URLS["mobilefrontend.html"], {}, options))
    assert len(tree.css("noscript img")) == 2


def test_sanitizer_removes_active_content() -> None:
    html, url = fixture("hostile.html"), FIXTURE_URLS["hostile.html"]
    output = rewrite_page(html, url, marks_for(find_images(html, url)))
    tree = parse(output)
    assert not tree.css("script, iframe, embed, object, param, template, frame, meta[http-equiv], link[rel=preload]")
    assert tree.css_first("link[rel=stylesheet]") is not None
    for node in elements(tree):
        for name, value in node.attributes.items():
            assert not name.startswith("on") and name != "ping", (node.tag, name)
            if value and (name in URL_ATTRIBUTES or name.endswith("href")):
                refs = [c.url for c in parse_srcset(value)] if name.endswith("srcset") else [value]
                assert all(not sanitize.is_unsafe_url(name, ref) for ref in refs), (name, value)
            if name == "style":
                assert not sanitize.is_unsafe_style(value or "")
    styles = [node.attributes.get("style") for node in tree.css("div")]
    assert styles == [None, None, "color: red"]
    assert "Object fallback text." in output and "No scripts here." in output
    assert 'onclick="x" and javascript:void(0) stays' in output  # text is text
    assert "alert(" not in visible_text(output)


HOSTILE_SNIPPETS = [
    # Removing an attribute must not join text into the end of a comment or of raw text.
    '<p>a<!-- <x-- onclick="a"><img src=x onerror=alert(1)> --></p>',
    '<style>p{}</sty src="javascript:1"le><img src=x onerror=alert(2)></style><p>after</p>',
    # The serialiser writes the text of these unescaped; inside SVG/MathML a browser reads it as markup.
    "<svg><style>&lt;img src=x onerror=alert(3)&gt;</style></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(4)>",
    "<svg><xmp>&lt;img src=x onerror=alert(5)&gt;</xmp><noembed>&lt;img src=x onerror=alert(6)&gt;</noembed></svg>",
    "<svg><noframes>&lt;img src=x onerror=alert(7)&gt;</noframes></svg><math><plaintext>&lt;img onerror=alert(8)&gt;",
    # A value ending like an attribute ("x src=") must not hide the real attribute after it.
    '<a title="x src=" onclick="alert(9)" href="javascript:alert(10)">t</a>',
    '<a title="a href=" onclick="alert(11)">t</a><img alt="x srcset=" onerror="alert(12)" src="/ok.png">',
    '<p title="a style=" style="x:expression(alert(13))">t</p><a title="a onx=" href="javascript:alert(14)">t</a>',
    '<a href="javascript:alert(15) href=" title="y">t</a><a href=" javascript:alert(16)">t</a>',
    # "<!--" in an attribute name is no comment.
    '<p onmouseov<!--er="alert(17)" title="x" onclick="alert(18)">t</p><!-- -->',
    "<svg><a xlink:href='javascript:alert(19)'>x</a></svg><a xlink:href='javascript:alert(20)'>y</a>",
    "<base href='//a<!--b.example/'><a href='/x'>x</a><img src=/i.png onerror=alert(21)>",
    "<portal><meta http-equiv=refresh content=0><script>alert(22)</script></portal><frameset><frame></frameset>",
    # Active elements dressed as lazy placeholders: made eager (unwrapped), and still removed. The
    # sanitiser's elements are found by the image scan's walk of the tree, before any of that.
    '<meta class="pcs-lazy-load-placeholder" http-equiv="refresh" content="0;url=javascript:alert(23)" '
    'data-src="/a.png">',
    '<iframe class="lazy-image-placeholder" data-src="/b.png" src="javascript:alert(24)">x</iframe><p>t</p>',
    '<noscript><img src="/c.png"></noscript>'
    '<script class="lazy-image-placeholder" data-src="/d.png">alert(25)</script>',
    '<svg class="pcs-lazy-load-placeholder" data-src="/e.png"><style>&lt;img src=x onerror=alert(26)&gt;</style></svg>',
    '<object data="x.swf"><span class="pcs-lazy-load-placeholder" data-src="/f.png"><embed src="javascript:alert(27)">'
    "</span></object>",
]


@pytest.mark.parametrize("html", HOSTILE_SNIPPETS)
def test_sanitised_pages_read_back_without_active_content(html: str) -> None:
    """What a browser makes of the output, with scripting on or off: no handlers, script URLs, scripts."""
    output = rewrite_page(html, "https://example.org/dir/page", {})
    for scripting in (False, True):
        tree = LexborHTMLParser(output, options=LexborDocumentOptions.WO_EVENTS, scripting=scripting)
        assert not tree.css("script, iframe, embed, portal, frame, frameset, meta[http-equiv]"), output
        for node in elements(tree):
            for name, value in node.attributes.items():
                assert not name.startswith("on"), (output, name)
                if value and (name in URL_ATTRIBUTES or name.endswith("href")):
                    assert not sanitize.is_unsafe_url(name, value), (output, name, value)
                if name == "style":
                    assert not sanitize.is_unsafe_style(value or ""), output


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_elements_found_by_the_image_walk_are_removed_as_a_query_would(path: Path, url: str) -> None:
    """`remove_unsafe_elements` given what a larger query found (the image scan's) removes what its own
    query would: the same page comes out."""
    html = path.read_text(encoding="utf-8")
    census = sanitize.tag_census(html.encode())
    selectors = sanitize.unsafe_selectors(census, ("base",))
    queried, given = parse(html), parse(html)
    sanitize.remove_unsafe_elements(queried, census, also=("base",))
    found = given.css(", ".join(["img", "[class]", *selectors])) if selectors else []
    sanitize.remove_unsafe_elements(given, census, also=("base",), found=found)
    assert given.html == queried.html


def test_comments_and_raw_text_are_left_as_they_are() -> None:
    html = '<p>a<!-- <a onclick="x()" href="javascript:y"> --><style>p{} <b onclick="z"></style></p>'
    output = rewrite_page(html, "https://example.org/", {})
    assert '<!-- <a onclick="x()" href="javascript:y"> -->' in output
    assert '<style>p{} <b onclick="z"></style>' in output


@pytest.mark.parametrize(("path", "url"), list(every_page()))
def test_links_get_what_the_parsed_value_resolves_to(path: Path, url: str) -> None:
    """The links rewritten on the page text hold exactly what their parsed values resolve to."""
    html = path.read_text(encoding="utf-8")
    before = parse(html)
    resolver = Resolver(yarl.URL(url))
    base = before.css_first("base[href]")
    if base is not None:
        joined = resolver.join(base.attributes.get("href") or "")
        if joined is not None and joined.absolute and joined.scheme in ("http", "https"):
            resolver = Resolver(joined)
    after = parse(rewrite_page(html, url, {}))
    pairs = list(zip(before.css("a"), after.css("a"), strict=True))
    for old, new in pairs:
        if "href" not in old.attributes:
            continue
        value = old.attributes["href"] or ""
        absolute = resolver.absolute(value)
        if not (absolute or "").startswith(("https:", "http:")) and sanitize.is_unsafe_url("href", value):
            assert "href" not in new.attributes, value
        else:
            assert (new.attributes["href"] or "") == (value if absolute is None else absolute), value


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=48), st.text(max_size=24).map(lambda text: text.encode("utf-8", "surrogatepass"))))
def test_utf8_is_checked_in_slices_as_decode_would(data: bytes) -> None:
    """Slices cut multi-byte sequences anywhere: the check still agrees with decoding the whole."""
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rewrite_module, "_UTF8_SLICE", 5)
        assert rewrite_module._is_utf8(data) == valid
        assert rewrite_module._utf8(data) == (data if valid else data.decode("utf-8", "replace").encode())


def test_pages_read_as_bytes_or_text_alike() -> None:
    html, url = fixture("parsoid.html"), FIXTURE_URLS["parsoid.html"]
    marks = marks_for(find_images(html, url))
    assert Page(html.encode(), url).render(marks) == Page(html, url).rewrite(marks).encode()
    broken = b"<p>caf\xe9 \xf0\x9f\x98<img src=/a.png>\xed\xa0\x80\x00\xc3\x00\xa9</p>"
    assert Page(broken, url).rewrite({}) == Page(broken.decode("utf-8", "replace"), url).rewrite({})


def test_sanitizing_can_be_turned_off() -> None:
    html, url = fixture("hostile.html"), FIXTURE_URLS["hostile.html"]
    tree = parse(rewrite_page(html, url, {}, RewriteOptions(sanitize=False)))
    assert tree.css("script") and tree.css_first("p").attributes.get("onclick") == "alert(1)"  # type: ignore[union-attr]
    kept = parse(rewrite_page(html, url, {}, RewriteOptions(sanitize=False, absolutize=False)))
    assert kept.css_first("link[rel=stylesheet]").attributes["href"] == "style.css"  # type: ignore[union-attr]


def test_fragments_stay_fragments() -> None:
    html, url = fixture("mobilefrontend.html"), FIXTURE_URLS["mobilefrontend.html"]
    output = rewrite_page(html, url, {})
    assert output.startswith('<div class="mw-content-ltr mw-parser-output"') and "<body" not in output
    assert output.lstrip().startswith("<div") and "<html" not in output


def test_rtl_page() -> None:
    html, url = fixture("rtl.html"), FIXTURE_URLS["rtl.html"]
    images = find_images(html, url)
    assert any(image.url.startswith("https://wikimedia.org/api/rest_v1/media/math/") for image in images)
    papyrus = next(image for image in images if "Papyrus" in image.url)
    assert papyrus.url == str(yarl.URL(papyrus.url))  # one canonical spelling
    tree = parse(rewrite_page(html, url, marks_for(images)))
    assert tree.css_first("body").attributes["dir"] == "rtl"  # type: ignore[union-attr]
    links = [node.attributes["href"] for node in tree.css("a")]
    assert "https://ar.wikipedia.org/wiki/كمية" in links


# --- REST summary ------------------------------------------------------------------------------------


def test_summary_images_and_verdicts() -> None:
    summary = json.loads(fixture("summary.json"))
    images = find_summary_images(summary)
    assert [(image.url.rsplit("/", 1)[1], image.width) for image in images] == [
        ("320px-Lighthouse_photo.jpg", 320),
        ("Lighthouse_photo.jpg", 3000),
    ]
    thumbnail, original = images
    result = rewrite_summary(
        summary,
        {thumbnail.url: Mark(invert=True, p_invert=0.91, model="m1"), original.url: Mark(invert=True, pending=True)},
    )
    assert result["thumbnail"] | {} == summary["thumbnail"] | {"invert": True, "p_invert": 0.91, "model": "m1"}
    assert result["originalimage"]["invert"] is False and result["originalimage"]["pending"] is True
    assert "invert" not in summary["thumbnail"]  # the input is not modified
    assert rewrite_summary({"title": "No images"}, {}) == {"title": "No images"}
    assert find_summary_images({"thumbnail": {"source": 7}, "originalimage": "x"}) == []


@pytest.mark.skipif(not (SHARED_PAGES / "enwiki-Tokyo.rest-page-summary.json").exists(), reason="no ../shared")
def test_real_summary() -> None:
    summary = json.loads((SHARED_PAGES / "enwiki-Tokyo.rest-page-summary.json").read_text())
    images = find_summary_images(summary)
    assert len(images) == 2
    result = rewrite_summary(summary, {image.url: Mark(invert=False, p_invert=0.02) for image in images})
    assert result["thumbnail"]["invert"] is False and result["originalimage"]["p_invert"] == 0.02


# --- the real pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shared_pages())
def test_real_page_shapes(name: str) -> None:
    html = (SHARED_PAGES / name).read_text(encoding="utf-8")
    url = SHARED_URLS[name]
    images = find_images(html, url)
    assert len(images) >= 5
    tree = parse(rewrite_page(html, url, marks_for(images)))
    assert not tree.css("script, .pcs-lazy-load-placeholder, .lazy-image-placeholder, noscript")
    assert all((node.attributes.get("src") or "").startswith("https://") for node in tree.css("img"))
    if "Cat" in name:
        # The taxobox edit icon sits in a skin-invert span: the page already inverts it.
        edit = [image for image in images if image.markup == "skin-invert"]
        assert edit and all(image.manual is True for image in edit)
        for node in tree.css(".skin-invert img"):
            assert "data-invertornot" not in node.attributes


# --- robustness ---------------------------------------------------------------------------------------


def test_deep_nesting_is_refused_quickly() -> None:
    depth = 100_000
    pages = {
        "divs": "<div>" * depth + "x" + "</div>" * depth,
        "unmatched end tags": "<span>" * depth + "</x>" * depth,
        "end tags in attributes": '<div title="></div>">' * depth,
        "end tags in comments": "<div><!--</div>-->" * depth,
    }
    for label, html in pages.items():
        started = time.perf_counter()
        with pytest.raises(RewriteError) as error:
            find_images(html, "https://example.org/")
        assert error.value.code == "page_too_complex", label
        # Refused after a linear check (~0.2 s); parsing them would take 20 s or more.
        assert time.perf_counter() - started < 10, label


@pytest.mark.parametrize("name", ["body", "html", "BoDy"])
def test_attributes_merged_by_repeated_html_or_body_tags_are_counted_together(name: str) -> None:
    """The tree builder adds the attributes of every later <body> (or <html>) tag to the first one's
    element, checking each against those already there: 800 such tags of 25 attributes take lexbor
    seconds (the duplicate checks grow with the square of all of them), in a 150 KB page."""
    tag = "<" + name + " " + " ".join(f"a{{}}_{i}" for i in range(25)) + ">"
    html = "".join(tag.format(*[n] * 25) for n in range(800)).encode()
    assert estimate_attributes(html).work >= (800 * 25) ** 2
    assert estimate_nesting(html).attributes == estimate_attributes(html)
    started = time.perf_counter()
    with pytest.raises(RewriteError, match="attributes") as error:
        Page(html, "https://example.org/")
    assert error.value.code == "page_too_complex"
    assert time.perf_counter() - started < 1  # a linear pre-pass, not the parse
    # The same attributes on <span> tags, which merge nothing, count tag by tag.
    spread = html.replace(f"<{name} ".encode(), b"<span ")
    assert estimate_attributes(spread).work == 800 * 25**2


def test_trusted_input_skips_the_nesting_check() -> None:
    html = "<div>" * 3000 + '<img src="/a.png">' + "</div>" * 3000
    with pytest.raises(RewriteError):
        find_images(html, "https://example.org/", options=RewriteOptions(max_parse_work=1000))
    assert len(find_images(html, "https://example.org/", options=RewriteOptions(max_parse_work=None))) == 1


def test_many_images_stay_linear() -> None:
    def page(count: int) -> str:
        return "<p>" + "".join(f'<img src="/i/{n}.png" srcset="/i/{n}@2x.png 2x">' for n in range(count))

    started = time.perf_counter()
    images = find_images(page(100_000), "https://example.org/", max_images=200)
    assert len(images) == 200 and time.perf_counter() - started < 10  # stops at the cap
    seconds = []
    for count in (2_500, 10_000):
        html = page(count)
        started = time.perf_counter()
        output = rewrite_page(html, "https://example.org/", marks_for(images))
        seconds.append(time.perf_counter() - started)
        assert output.count("data-invertornot=") == 200
    assert seconds[1] < 8 * seconds[0] + 1  # four times the images, about four times the work


@pytest.mark.parametrize(
    "html",
    [
        "",
        "just text",
        "<img>",
        "<img src>",
        '<img src="">',
        "<html><img src=/a.png>",
        "<body><img src=/a.png></body>",
        "\ud800<img src='/\udc00.png'>\x00",
        "<img src='http://[::1'>",
        "<img src='https://exa mple.org/a b.png' srcset=', , ,'>",
        "<picture><source srcset><img src=//x/y.png></picture>",
        "<span class='lazy-image-placeholder'></span><noscript><img></noscript>",
        "<base href='javascript:alert(1)'><img src='a.png'>",
        "<svg><image href='a.png'/><a xlink:href='b'>x</a></svg>",
        "<table><img src=/t.png><tr><td>cell",
        "</div></div><img src=/x.png></p>",
        "<span class='lazy-image-placeholder' data-src='/a.png'></span>",
        "<noscript><img src=/a.png><img src=/b.png></noscript><span class=lazy-image-placeholder data-src=/a.png>",
        "<span class=pcs-lazy-load-placeholder data-src=/c.png><img src=/inner.png></span>",
        "<img class=lazy-image-placeholder src=/d.png><picture><source srcset='//x/a.png 1x'></picture>",
    ],
)
def test_odd_input_never_crashes(html: str) -> None:
    for image in find_images(html, "https://example.org/dir/page"):
        assert image.url.startswith(("http://", "https://"))
    output = rewrite_page(html, "https://example.org/dir/page", {})
    assert isinstance(output, str)
    parse(output)


MUTATION_TEXT = ["<", ">", '"', "'", "</div>", "<div>", "<!--", "-->", "<script>", "<img src=x>", "&", "\x00"]
MUTATION_TEXT += ["\ufffd", "=", " ", "<noscript>", "<svg>", "<![CDATA[", "<span class=invert>"]
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "insert"]),
        st.floats(0, 1),
        st.integers(1, 200),
        st.sampled_from(MUTATION_TEXT),
    ),
    max_size=6,
)


def mutate(html: str, steps: list[tuple[str, float, int, str]]) -> str:
    for action, where, length, text in steps:
        at = int(where * len(html))
        if action == "delete":
            html = html[:at] + html[at + length :]
        elif action == "duplicate":
            html = html[:at] + html[at : at + length] * 2 + html[at + length :]
        else:
            html = html[:at] + text + html[at:]
    return html


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FIXTURE_URLS)), MUTATIONS)
def test_mutated_pages_never_crash(name: str, steps: list[tuple[str, float, int, str]]) -> None:
    html = mutate(fixture(name), steps)
    url = FIXTURE_URLS[name]
    started = time.perf_counter()
    try:
        images = find_images(html, url)
        output = rewrite_page(html, url, marks_for(images))
    except RewriteError as error:
        assert error.code == "page_too_complex"
        return
    assert time.perf_counter() - started < 5
    tree = parse(output)
    assert not tree.css("script")
    assert not [name for node in elements(tree) for name in node.attributes if name.startswith("on")]
    assert len(marked(tree)) >= len([image for image in images if image.manual is None])


def real_depth(html: str) -> int:
    tree = LexborHTMLParser(html, options=LexborDocumentOptions.WO_EVENTS)
    depth: dict[int, int] = {}
    deepest = 0
    root = tree.root
    assert root is not None
    for node in root.traverse():
        parent = node.parent
        depth[node.mem_id] = depth.get(parent.mem_id, 0) + 1 if parent is not None else 1
        deepest = max(deepest, depth[node.mem_id])
    return deepest


SOUP = st.lists(
    st.sampled_from(["<div>", "</div>", "<span>", "</span>", "<b>", "</b>", "<p>", "</p>", "<li>", "<ul>", "</ul>",
                     "<table>", "<td>", "<tr>", "</table>", "<svg>", "</svg>", "<g>", "<path/>", "<link>",
                     "<foreignObject>", "<script>", "</script>", "<style>", "</style>", "<!--", "-->", "<title>",
                     "</title>", '<a title="', '">', "='", "'", "<select>", "<option>", "<template>", "</template>",
                     "<object>", "</x>", "<![CDATA[", "]]>", "x", " ", "<textarea>", "</textarea>", "<i/>"]),
    max_size=120,
)  # fmt: skip


@settings(max_examples=200, deadline=None, database=None)
@given(SOUP)
def test_nesting_estimate_bounds_the_real_depth(tokens: list[str]) -> None:
    """The estimate may be loose, never much too low: it is what keeps parsing bounded."""
    html = "".join(tokens)
    estimate = estimate_nesting(html.encode())
    assert estimate.depth * 3 + 8 >= real_depth(html), html


def test_nesting_estimate_is_tight_on_real_pages() -> None:
    for name in FIXTURE_URLS:
        html = fixture(name)
        estimate = estimate_nesting(html.encode())
        assert real_depth(html) <= estimate.depth * 3 + 8
        assert estimate.depth < 40, name


def test_names_holding_nul_never_match() -> None:
    """The parser reads NUL in a tag name as U+FFFD: "</a\\0c>" closes no "<a\\0b>" (nor "<a>")."""
    for unit in ("<a\0b></a\0c>", "<span\0></span>", "<x\0y></x>"):
        html = unit * 5000  # parsing it takes seconds: 5,000 open elements, each end tag walks them all
        assert estimate_nesting(html.encode()).depth >= 5000, unit
        with pytest.raises(RewriteError):
            find_images(html, "https://example.org/")


def test_few_tags_need_no_nesting_estimate() -> None:
    """Depth never exceeds the tag count, so a page with at most sqrt(limit) tags is parsed unchecked,
    while one more tag makes the estimate decide."""
    options = RewriteOptions(max_parse_work=100)
    assert find_images("<div>" * 9 + "<img src=/a.png>", "https://example.org/", options=options)  # 10 tags
    with pytest.raises(RewriteError) as error:
        find_images("<div>" * 10 + "<img src=/a.png>", "https://example.org/", options=options)  # 11 tags
    assert error.value.code == "page_too_complex"
    flat = "<p>" + "<b>x</b>" * 6 + "<img src=/a.png>"  # 14 tags, but shallow: the estimate lets it through
    assert find_images(flat, "https://example.org/", options=RewriteOptions(max_parse_work=150))


def test_large_pages_with_few_tags_are_estimated_and_pass() -> None:
    html = "<p>" + "words " * 40_000 + "<img src=/a.png></p>"  # 240 kB, three tags
    assert estimate_nesting(html.encode()).tags == 3
    assert len(find_images(html, "https://example.org/")) == 1


CENSUS_SOUP = st.lists(
    st.sampled_from(["<svg>", "<SVG/>", "<svg\0>", "<math", "<!DOCTYPE html>", "<!doctypex>", "<blockquote cite=x>",
                     "<blockquotex>", "<FencedFrame>", "<plaintext>", "<noscript>", "<base href=x>", "<q>", "</q>",
                     "<img/>", "<head>", "<body>", "<style>", "<xmp>", "<template>", "<", ">", "x", " ", '"', "<!--"]),
    max_size=40,
)  # fmt: skip


@settings(max_examples=200, deadline=None, database=None)
@given(CENSUS_SOUP)
def test_nesting_estimate_takes_the_tag_census_too(tokens: list[str]) -> None:
    """Large pages get their census from the tag names the estimate reads: the same answer."""
    data = "".join(tokens).encode()
    assert estimate_nesting(data, names=sanitize.CENSUS_TAGS).names == sanitize.tag_census(data)


def test_tag_census_from_the_estimate_on_real_pages() -> None:
    for name in FIXTURE_URLS:
        data = fixture(name).encode()
        assert estimate_nesting(data, names=sanitize.CENSUS_TAGS).names == sanitize.tag_census(data), name
