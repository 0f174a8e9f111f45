"""Marking the images of a fetched page with their verdicts, and making the page safe to show alone.

Pure functions over selectolax's lexbor parser: no I/O. The page proxy parses a page once (`Page`),
classifies the `ImageRef.url` of each of its images, then rewrites it with the verdicts; a static-site
tool can do the same over files, or call `find_images` and `rewrite_page`, which parse the same way.
Finding images is `proxy.pageimages`; sanitising policy is `proxy.sanitize`.

A marked image (and a lazy placeholder, when kept) gets the class ``invert`` or ``invert-not`` (names
configurable), ``data-invertornot="invert|invert-not|pending"``, ``data-invertornot-p="0.973"`` and
``data-invertornot-model``; one still pending gets ``invert-not`` and ``data-invertornot-pending``.
``data-invertornot`` is what tells these marks from the page's own markup when a page is rewritten
again.

The page is parsed with scripting disabled, like the sandboxed popup that shows the result (CSP
``sandbox`` without ``allow-scripts`` disables scripting), so ``<noscript>`` content is markup. The
rewritten page is meant to be shown without its scripts, so by default lazy-loading placeholders
become plain ``<img>`` (nothing else would ever load them) and ``<noscript>`` is unwrapped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yarl
from selectolax.lexbor import LexborDocumentOptions, LexborHTMLParser, LexborNode

from proxy import sanitize
from proxy.nesting import estimate_nesting
from proxy.pageimages import ImageOccurrence, ImageRef, image_ref, is_placeholder, scan_images
from proxy.urls import Candidate, Resolver, parse_srcset, serialize_srcset

__all__ = [
    "ImageRef",
    "Mark",
    "Page",
    "RewriteError",
    "RewriteOptions",
    "find_images",
    "find_summary_images",
    "rewrite_page",
    "rewrite_summary",
]

# Attributes a placeholder keeps for its image as data-X (pcs LazyLoadTransform, MobileFrontend).
_PLACEHOLDER_COPIED = ("src", "srcset", "width", "height", "alt", "usemap", "style")
_MARK_ATTRIBUTES = ("data-invertornot-p", "data-invertornot-model", "data-invertornot-pending")
_HREF = re.compile(' href="')
_DOCUMENT_MARKUP = frozenset({"!doctype", "html", "head", "body"})


class RewriteError(ValueError):
    """A page this module refuses to process; ``code`` is stable ("page_too_complex")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Mark:
    """A verdict to write onto the images of one URL."""

    invert: bool
    p_invert: float | None = None
    model: str | None = None
    pending: bool = False  # the deadline passed before a verdict: marked "don't invert" for now


@dataclass(frozen=True, slots=True)
class RewriteOptions:
    invert_class: str = "invert"
    invert_not_class: str = "invert-not"
    sanitize: bool = True  # remove scripts and other active content (see proxy.sanitize)
    absolutize: bool = True  # make every URL absolute and drop <base>, so the HTML works anywhere
    # Turn lazy-loading placeholders into plain <img> and unwrap <noscript>: the rewritten page is
    # shown without its scripts, so nothing would ever load them.
    eager_images: bool = True
    # Refuse pages the parser would need more than this many stack steps for (proxy.nesting): about
    # 0.1-0.5 s of parsing at worst, where real pages need well under 10**6. None trusts the input.
    max_parse_work: int | None = 20_000_000


class Page:
    """One parsed page: list its images, then rewrite it (once: rewriting changes the parsed tree).

    Parsing (and the nesting check before it) happens once however the page is used, which is why
    the page proxy holds a `Page` while it classifies the images.
    """

    def __init__(self, html: str, base_url: str, options: RewriteOptions | None = None) -> None:
        """Parses ``html`` (a document or a fragment) fetched from ``base_url``.

        Raises `RewriteError` ("page_too_complex") for pages nested too deeply to parse in bounded
        time, and ValueError if ``base_url`` is not absolute.
        """
        self.options = options or RewriteOptions()
        source = html.encode("utf-8", "surrogatepass")  # lexbor makes lone surrogates U+FFFD
        # Which tags of interest occur: one pass over the text spares searching the tree for absent ones.
        self._census = sanitize.tag_census(source)
        self._tree = _parse(source, self.options, fragment=not self._census & _DOCUMENT_MARKUP)
        self._resolver = _base_resolver(self._tree, base_url, has_base="base" in self._census)
        self._pending: Iterator[ImageOccurrence] | None = None
        self._seen: list[ImageOccurrence] = []
        self._rewritten = False

    def images(self, *, max_images: int | None = None) -> list[ImageRef]:
        """Every image in document order, one `ImageRef` per classification URL. With ``max_images``
        only the first that many distinct images (the page is read no further than needed);
        `rewrite` then leaves the others unmarked, as they get no `Mark`."""
        found: dict[str, list[ImageOccurrence]] = {}
        for occurrence in self._occurrences(collect_urls=True):
            if occurrence.url not in found:
                if max_images is not None and len(found) >= max_images:
                    break
                found[occurrence.url] = []
            found[occurrence.url].append(occurrence)
        return [image_ref(url, occurrences) for url, occurrences in found.items()]

    def rewrite(self, marks: Mapping[str, Mark]) -> str:
        """The page with every image marked by ``marks`` (keyed by `ImageRef.url`), ready to show
        on its own: URLs absolute, active content removed, lazy images made plain (`RewriteOptions`).

        Images with manual markup are never changed; images without a mark are left as they are.
        Marking is idempotent: rewriting the result again replaces the marks instead of adding more.
        """
        if self._rewritten:
            raise RuntimeError("a Page can be rewritten once; parse the page again")
        self._rewritten = True
        options, tree = self.options, self._tree
        for occurrence in list(self._occurrences(collect_urls=False)):
            mark = None if occurrence.manual is not None else marks.get(occurrence.url)
            elements = _make_eager(tree, occurrence) if options.eager_images else list(occurrence.elements())
            if mark is not None:
                for element in elements:
                    _apply_mark(element, mark, options)
        census = self._census
        if options.eager_images and "noscript" in census:
            tree.unwrap_tags(["noscript"])
        if options.sanitize:
            sanitize.remove_unsafe_elements(tree, census)
        if options.absolutize or options.sanitize:
            _rewrite_attributes(tree, census, self._resolver, options)
        if options.absolutize and "base" in census:
            for base in tree.css("base"):
                base.decompose()  # every URL is absolute now; a <base> would only mislead "#" links
        result = tree.html or ""
        if options.absolutize:
            result = _absolutize_links(result, self._resolver)
        return sanitize.strip_event_handlers(result) if options.sanitize else result

    def _occurrences(self, *, collect_urls: bool) -> Iterator[ImageOccurrence]:
        """All occurrences, scanning on only as far as a caller reads. Every URL of each image is
        resolved only if `images` asked first (a URL join per srcset candidate)."""
        if self._pending is None and not self._seen:
            ours = (self.options.invert_class, self.options.invert_not_class)
            self._pending = scan_images(self._tree, self._resolver, ours=ours, collect_urls=collect_urls)
        yield from self._seen
        if self._pending is None:
            return
        for occurrence in self._pending:
            self._seen.append(occurrence)
            yield occurrence
        self._pending = None


def find_images(
    html: str, base_url: str, *, max_images: int | None = None, options: RewriteOptions | None = None
) -> list[ImageRef]:
    """`Page.images` of ``html``: every image, one `ImageRef` per classification URL."""
    return Page(html, base_url, options).images(max_images=max_images)


def rewrite_page(html: str, base_url: str, marks: Mapping[str, Mark], options: RewriteOptions | None = None) -> str:
    """`Page.rewrite` of ``html``: every image marked by ``marks`` (keyed by `ImageRef.url`)."""
    return Page(html, base_url, options).rewrite(marks)


def find_summary_images(summary: Mapping[str, Any]) -> list[ImageRef]:
    """The images of a Wikipedia REST summary (``/page/summary/``): its thumbnail and original image."""
    resolver = _summary_resolver(summary)
    found: dict[str, ImageRef] = {}
    for key in ("thumbnail", "originalimage"):
        image = summary.get(key)
        if not isinstance(image, Mapping) or not isinstance(image.get("source"), str):
            continue
        url = resolver.canonical(image["source"])
        if url is not None and url not in found:
            found[url] = ImageRef(
                url=url,
                manual=None,
                urls=(url,),
                width=_as_int(image.get("width")),
                height=_as_int(image.get("height")),
            )
    return list(found.values())


def rewrite_summary(summary: Mapping[str, Any], marks: Mapping[str, Mark]) -> dict[str, Any]:
    """A copy of a REST summary with ``invert`` (and ``p_invert``, ``model``, ``pending`` when known)
    added to ``thumbnail`` and ``originalimage``; the input is not modified."""
    result = copy.deepcopy(dict(summary))
    resolver = _summary_resolver(summary)
    for key in ("thumbnail", "originalimage"):
        image = result.get(key)
        if not isinstance(image, dict) or not isinstance(image.get("source"), str):
            continue
        url = resolver.canonical(image["source"])
        mark = marks.get(url) if url is not None else None
        if mark is None:
            continue
        image["invert"] = mark.invert and not mark.pending
        if mark.p_invert is not None:
            image["p_invert"] = mark.p_invert
        if mark.model is not None:
            image["model"] = mark.model
        if mark.pending:
            image["pending"] = True
    return result


def _summary_resolver(summary: Mapping[str, Any]) -> Resolver:
    page = summary.get("content_urls", {})
    page = page.get("desktop", {}).get("page") if isinstance(page, Mapping) else None
    try:
        base = yarl.URL(page) if isinstance(page, str) else None
    except ValueError:
        base = None
    return Resolver(base if base is not None and base.absolute else yarl.URL("https://upload.wikimedia.org/"))


def _as_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _parse(data: bytes, options: RewriteOptions, *, fragment: bool) -> LexborHTMLParser:
    """Parses UTF-8 ``data`` after checking that the tree builder's work stays bounded. A page with
    few tags needs no check: its depth times its tags is at most tags squared."""
    if options.max_parse_work is not None and data.count(b"<") ** 2 > options.max_parse_work:
        estimate = estimate_nesting(data)
        if estimate.work > options.max_parse_work:
            raise RewriteError(
                "page_too_complex",
                f"page nests up to {estimate.depth} elements deep over {estimate.tags} tags; "
                f"parsing it could take {estimate.work} steps (limit {options.max_parse_work})",
            )
    # A fragment stays a fragment (no <html><head><body> added), so that a tool can put it back.
    return LexborHTMLParser(data, is_fragment=fragment, options=LexborDocumentOptions.WO_EVENTS, scripting=False)


def _base_resolver(tree: LexborHTMLParser, base_url: str, *, has_base: bool) -> Resolver:
    """The document's base URL is its first <base href>, resolved against the page URL."""
    resolver = Resolver(yarl.URL(base_url))
    base = tree.css_first("base[href]") if has_base else None
    if base is not None:
        joined = resolver.join(base.attributes.get("href") or "")
        if joined is not None and joined.absolute and joined.scheme in ("http", "https"):
            resolver = Resolver(joined)
    return resolver


def _make_eager(tree: LexborHTMLParser, occurrence: ImageOccurrence) -> list[LexborNode]:
    """Replaces a lazy-loading placeholder by what a browser would show after loading it. Returns the
    elements that now show the image.

    The placeholder element goes but its content stays (pcs's empty spacer, MobileFrontend's
    ``&nbsp;``): the text is unchanged, and nothing is lost where a broken page nested more in it.
    """
    image, placeholder = occurrence.image, occurrence.placeholder
    if placeholder is None:
        if image is not None:
            _promote_lazy_attributes(image)
            return [image]
        return []
    if image is not None:
        # MobileFrontend: the <noscript><img> becomes the image (its <noscript> is unwrapped later);
        # the placeholder only carries the srcset the <img> lacks.
        srcset = placeholder.attributes.get("data-srcset")
        if srcset and not image.attributes.get("srcset"):
            image.attrs["srcset"] = srcset
        placeholder.unwrap()
        occurrence.placeholder = None
        return [image]
    created = tree.create_node("img")
    attributes = placeholder.attributes
    for name in _PLACEHOLDER_COPIED:
        value = attributes.get(f"data-{name}")
        if value is not None:
            created.attrs[name] = value
    if "width" not in created.attrs and attributes.get("data-width") is None and occurrence.width:
        created.attrs["width"] = f"{occurrence.width:g}"
    classes = attributes.get("data-class")
    if classes:
        created.attrs["class"] = classes
    for name, value in attributes.items():
        if name.startswith("data-data-"):  # pcs keeps data-file-width as data-data-file-width
            created.attrs[name[5:]] = value
    placeholder.insert_before(created, move=True)
    placeholder.unwrap()
    occurrence.image, occurrence.placeholder = created, None
    return [created]


def _promote_lazy_attributes(image: LexborNode) -> None:
    """Generic lazy loaders keep the real URL in data-src and a stand-in (or nothing) in src."""
    attributes = image.attributes
    src = (attributes.get("src") or "").strip()
    if attributes.get("data-src") and (not src or src.lower().startswith("data:")):
        image.attrs["src"] = attributes["data-src"]
        if attributes.get("data-srcset"):
            image.attrs["srcset"] = attributes["data-srcset"]


def _apply_mark(element: LexborNode, mark: Mark, options: RewriteOptions) -> None:
    """Writes ``mark`` onto an image or placeholder, replacing any mark of an earlier pass. On a
    placeholder the class also goes into data-class, which the lazy loader gives the <img> it makes."""
    invert = mark.invert and not mark.pending
    chosen = options.invert_class if invert else options.invert_not_class
    ours = (options.invert_class, options.invert_not_class)
    attributes = element.attrs
    names = ["class"] + (["data-class"] if is_placeholder(element) else [])
    for name in names:
        classes = [c for c in (attributes.get(name) or "").split() if c not in ours]
        attributes[name] = " ".join([*classes, chosen])
    attributes["data-invertornot"] = "pending" if mark.pending else ("invert" if invert else "invert-not")
    for name in _MARK_ATTRIBUTES:
        if name in attributes:
            del attributes[name]
    if mark.p_invert is not None:
        attributes["data-invertornot-p"] = f"{mark.p_invert:.3f}"
    if mark.model:
        attributes["data-invertornot-model"] = mark.model
    if mark.pending:
        attributes["data-invertornot-pending"] = ""


def _rewrite_attributes(
    tree: LexborHTMLParser, census: frozenset[str], resolver: Resolver, options: RewriteOptions
) -> None:
    """Absolute URLs and, when sanitising, no script URLs, pings or scripted styles. Elements are found
    by attribute with lexbor's selectors, as few queries as possible (each walks the whole tree);
    event handlers are removed later, from the serialised page (`sanitize.strip_event_handlers`)."""
    clean, absolutize = options.sanitize, options.absolutize
    # Links starting "/" or "./" (most of a page's thousands) are made absolute on the serialised
    # page by `_absolutize_links`, and "#..." ones stay as they are; none of them is a script URL.
    links = '[href]:not([href^="/"]):not([href^="./"]):not([href^="#"])' if absolutize else "[href]"
    for selector, name in ((links, "href"), ("[src]", "src")):
        for node in tree.css(selector):
            value = node.attrs.get(name)
            if value is not None:
                _rewrite_url(node, name, value, resolver, clean, absolutize)
    rare = sanitize.rare_url_attributes(census)
    selectors = [f"[{name}]" for name in rare]
    selectors += [f"[{name}]" for name in sorted(sanitize.SRCSET_ATTRIBUTES)]
    if clean:
        selectors += [sanitize.SUSPICIOUS_STYLE_SELECTOR, "[ping]"]
    if census & {"svg", "math"}:
        selectors.append("svg *, math *")  # namespaced attributes (xlink:href) cannot be selected by name
    for node in tree.css(", ".join(selectors)):
        for name, value in node.attributes.items():
            if value is None:
                continue
            if name in rare or (":" in name and name.endswith("href")):
                _rewrite_url(node, name, value, resolver, clean, absolutize)
            elif name in sanitize.SRCSET_ATTRIBUTES:
                _rewrite_srcset(node, name, value, resolver, options)
            elif clean and (name == "ping" or (name == "style" and sanitize.is_unsafe_style(value))):
                del node.attrs[name]


def _absolutize_links(html: str, resolver: Resolver) -> str:
    """Makes ``href`` values starting "/" or "./" absolute in serialised ``html``: a prefix for each,
    with no Python work per attribute beyond finding it. The concatenation means to a browser what the
    reference meant against the base (it removes dot segments itself); "/\\" is a host like "//".
    Serialised HTML escapes "<" and ">" everywhere but in raw text (<style>, comments, unsanitised
    <script>), so a match is an attribute when the last "<" or ">" before it is a "<", as in
    `sanitize.strip_event_handlers`; in raw text a link-like string may get the prefix too."""
    pieces: list[str] = []
    kept = scanned = 0
    in_tag = False
    origin, directory, scheme = (
        _escape_attribute(resolver.origin_prefix),
        _escape_attribute(resolver.directory_prefix),
        _escape_attribute(resolver.scheme_prefix),
    )
    for match in _HREF.finditer(html):
        at, value_at = match.start(), match.end()
        last_open, last_close = html.rfind("<", scanned, at), html.rfind(">", scanned, at)
        if last_open != -1 or last_close != -1:
            in_tag = last_open > last_close
        scanned = value_at
        if not in_tag:
            continue
        if html.startswith("./", value_at):
            prefix, skip = directory, 2
            while html.startswith("./", value_at + skip):
                skip += 2
        elif html.startswith(("//", "/\\"), value_at):
            prefix, skip = scheme, 0
        elif html.startswith("/", value_at):
            prefix, skip = origin, 0
        else:
            continue
        pieces += (html[kept:value_at], prefix)
        kept = value_at + skip
    if not pieces:
        return html
    pieces.append(html[kept:])
    return "".join(pieces)


def _escape_attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;")


def _rewrite_url(node: LexborNode, name: str, value: str, resolver: Resolver, clean: bool, absolutize: bool) -> None:
    absolute = resolver.absolute(value) if absolutize else value
    # Whatever a browser resolves to http(s) is no script; anything else gets the real check.
    if clean and not (absolute or "").startswith(("https:", "http:")) and sanitize.is_unsafe_url(name, value):
        del node.attrs[name]
    elif absolute is not None and absolute != value:
        node.attrs[name] = absolute


def _rewrite_srcset(node: LexborNode, name: str, value: str, resolver: Resolver, options: RewriteOptions) -> None:
    parsed = parse_srcset(value)
    candidates = parsed
    if options.sanitize:
        candidates = [c for c in candidates if not sanitize.is_unsafe_url(name, c.url)]
        if parsed and not candidates:
            del node.attrs[name]
            return
    if options.absolutize:
        candidates = [Candidate(resolver.absolute(c.url) or c.url, c.descriptor) for c in candidates]
    if candidates != parsed:
        node.attrs[name] = serialize_srcset(candidates)
