"""Marking the images of a fetched page with their verdicts, and making the page safe to show alone.

Pure functions over selectolax's lexbor parser: no I/O. The page proxy parses a page once (`Page`,
from the bytes it fetched), classifies the `ImageRef.url` of each of its images, then renders it with
the verdicts; a static-site tool can do the same over files, or call `find_images` and `rewrite_page`,
which parse the same way. Finding images is `proxy.pageimages`; sanitising policy is `proxy.sanitize`.

Marking and removing elements happen on the parsed tree; URLs and attributes are rewritten on the
serialised page, where a few passes over the text replace a selector query per attribute name and
Python work per element (`_rewrite_serialised` says why that is exact enough, and safe).

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

import codecs
import copy
import functools
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yarl
from selectolax.lexbor import LexborDocumentOptions, LexborHTMLParser, LexborNode

from proxy import sanitize
from proxy.nesting import AttributeEstimate, estimate_attributes, estimate_nesting
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
    # Refuse pages whose tags could hold so many attributes that lexbor's duplicate checks (quadratic in
    # one tag's attributes, about 2 ns x attributes**2) take over about 50 ms: this bounds the sum over
    # tags of attributes squared (proxy.nesting). Real pages stay near 3 x 10**6 at most (a Parsoid
    # reference list whose data-mw holds 1,400 words). None trusts the input.
    max_attribute_work: int | None = 25_000_000


class Page:
    """One parsed page: list its images, then rewrite it (once: rewriting changes the parsed tree).

    Parsing (and the nesting check before it) happens once however the page is used, which is why
    the page proxy holds a `Page` while it classifies the images.
    """

    def __init__(self, html: str | bytes, base_url: str, options: RewriteOptions | None = None) -> None:
        """Parses ``html`` (a document or a fragment, as text or UTF-8) fetched from ``base_url``.

        Raises `RewriteError` ("page_too_complex") for pages nested too deeply to parse in bounded
        time, and ValueError if ``base_url`` is not absolute.
        """
        self.options = options or RewriteOptions()
        self._census, self._tree = _parse(_utf8(html), self.options)
        self._resolver = _base_resolver(self._tree, base_url, has_base="base" in self._census)
        self._pending: Iterator[ImageOccurrence] | None = None
        self._seen: list[ImageOccurrence] = []
        self._rewritten = False
        # Every URL is made absolute; a <base> would only mislead "#" links.
        self._bases = ("base",) if self.options.absolutize and "base" in self._census else ()
        # Candidates for the sanitiser, found by the image scan's walk of the tree (`_occurrences`).
        self._unsafe: list[LexborNode] | None = None

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
        """`render` as text."""
        return self.render(marks).decode("utf-8")

    def render(self, marks: Mapping[str, Mark]) -> bytes:
        """The page (UTF-8) with every image marked by ``marks`` (keyed by `ImageRef.url`), ready to show
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
        census, bases = self._census, self._bases
        if options.eager_images and "noscript" in census:
            tree.unwrap_tags(["noscript"])
        if options.sanitize:
            sanitize.remove_unsafe_elements(tree, census, also=bases, found=self._unsafe)
        elif bases:
            for base in tree.css("base"):
                base.decompose()
        result = (tree.html or "").encode("utf-8", "replace")
        if options.absolutize or options.sanitize:
            result = _rewrite_serialised(result, census, self._resolver, options)
        return result

    def _occurrences(self, *, collect_urls: bool) -> Iterator[ImageOccurrence]:
        """All occurrences, scanning on only as far as a caller reads. Every URL of each image is
        resolved only if `images` asked first (a URL join per srcset candidate)."""
        if self._pending is None and not self._seen:
            ours = (self.options.invert_class, self.options.invert_not_class)
            also = ""
            if self.options.sanitize:
                # The elements the sanitiser removes are found by the same walk of the tree.
                also = ", ".join(sanitize.unsafe_selectors(self._census, self._bases))
                self._unsafe = []
            self._pending = scan_images(
                self._tree, self._resolver, ours=ours, collect_urls=collect_urls, also=also, also_found=self._unsafe
            )
        yield from self._seen
        if self._pending is None:
            return
        for occurrence in self._pending:
            self._seen.append(occurrence)
            yield occurrence
        self._pending = None


def find_images(
    html: str | bytes, base_url: str, *, max_images: int | None = None, options: RewriteOptions | None = None
) -> list[ImageRef]:
    """`Page.images` of ``html``: every image, one `ImageRef` per classification URL."""
    return Page(html, base_url, options).images(max_images=max_images)


def rewrite_page(
    html: str | bytes, base_url: str, marks: Mapping[str, Mark], options: RewriteOptions | None = None
) -> str:
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


def _utf8(html: str | bytes) -> bytes:
    """``html`` as the UTF-8 the parser reads. Bytes that are not valid UTF-8 are decoded first, U+FFFD
    for what is not: lexbor's own decoder can drop bytes there (a NUL or CR inside a broken sequence),
    and the nesting check must see what the parser will."""
    if isinstance(html, str):
        return html.encode("utf-8", "surrogatepass")  # lexbor makes lone surrogates U+FFFD
    return html if _is_utf8(html) else html.decode("utf-8", "replace").encode("utf-8")


# Bytes checked at a time by `_is_utf8`.
_UTF8_SLICE = 64 * 1024


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8 (what ``data.decode("utf-8")`` accepts), decoded a slice at a time:
    the text of a whole page (two bytes a character once one is not ASCII) is a fresh allocation of
    megabytes, whose pages the kernel has to fault in again on every request, which costs several
    times the decoding; slices reuse the same small buffers."""
    if data.isascii():
        return True
    view, size, position = memoryview(data), len(data), 0
    try:
        while position < size:
            end = position + _UTF8_SLICE
            # Not final: a sequence cut by the slice's end is left for the next slice (and counted there).
            position += codecs.utf_8_decode(view[position:end], "strict", end >= size)[1]
    except UnicodeDecodeError:
        return False
    return True


# Up to this size a page's tags are counted before its nesting is estimated: a page with few tags needs
# no estimate (its depth times its tags is at most tags squared). Larger pages nearly always have too
# many, and the estimate reads the tags anyway.
_COUNT_TAGS_BELOW = 128 * 1024


def _check_nesting(data: bytes, limit: int, attribute_limit: int | None) -> frozenset[str]:
    """Raises `RewriteError` if parsing ``data`` could take more than ``limit`` steps, or its attributes
    more than ``attribute_limit``; returns its census."""
    estimate = estimate_nesting(data, names=sanitize.CENSUS_TAGS)
    if attribute_limit is not None:
        _check_attributes(estimate.attributes, attribute_limit)
    if estimate.work > limit:
        raise RewriteError(
            "page_too_complex",
            f"page nests up to {estimate.depth} elements deep over {estimate.tags} tags; "
            f"parsing it could take {estimate.work} steps (limit {limit})",
        )
    return estimate.names


def _check_attributes(estimate: AttributeEstimate, limit: int) -> None:
    if estimate.work > limit:
        raise RewriteError(
            "page_too_complex",
            f"page has tags with too many attributes: up to {estimate.most} in one tag; checking them for "
            f"duplicates could take {estimate.work} steps (limit {limit})",
        )


def _parse(data: bytes, options: RewriteOptions) -> tuple[frozenset[str], LexborHTMLParser]:
    """The `sanitize.tag_census` of UTF-8 ``data`` and its parse, after checking that the tree builder's
    work stays bounded. The census says which tags of interest occur, which spares searching the tree
    for absent ones; when the nesting estimate reads the page's tags, it takes the census too."""
    limit = options.max_parse_work
    census: frozenset[str] | None = None
    # A page with at most sqrt(limit) tags needs no check, and it has at most one tag per byte.
    if limit is not None and len(data) ** 2 > limit:  # noqa: SIM102 (two reasons, two tests)
        if len(data) > _COUNT_TAGS_BELOW or data.count(b"<") ** 2 > limit:
            census = _check_nesting(data, limit, options.max_attribute_work)
    # Without the nesting estimate, the attributes get their own. A page holds at most half its bytes in
    # attributes (each needs a separator and a name), and the tree builder may clone a formatting element
    # with all of them once per later token (at most one per byte): below that cubic bound the check is
    # skipped (pages of a few hundred bytes), above it the estimate, which models the clones, decides.
    attribute_limit = options.max_attribute_work
    half = len(data) // 2
    if census is None and attribute_limit is not None and len(data) * half * half > attribute_limit:
        _check_attributes(estimate_attributes(data), attribute_limit)
    if census is None:
        census = sanitize.tag_census(data)
    # A fragment stays a fragment (no <html><head><body> added), so that a tool can put it back.
    tree = LexborHTMLParser(
        data, is_fragment=not census & _DOCUMENT_MARKUP, options=LexborDocumentOptions.WO_EVENTS, scripting=False
    )
    return census, tree


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


def _rewrite_serialised(html: bytes, census: frozenset[str], resolver: Resolver, options: RewriteOptions) -> bytes:
    """Absolute URLs and, when sanitising, no script URLs, event handlers, pings or scripted styles, on
    the serialised page (UTF-8): two linear passes instead of a selector query per attribute name (each
    walks the whole tree) and Python work per element.

    Serialised HTML is regular: lexbor writes every attribute as ``␣name="value"`` with ``&``, ``"``,
    ``<``, ``>`` and no-break spaces escaped in the value, and escapes ``<`` and ``>`` in text. So an
    attribute lies in a tag exactly when the last ``<`` or ``>`` before it is a ``<`` (`_InTag`), and
    every real attribute is found. What else can look like one, and how it is kept harmless:

    * the end of a value: ``title="a␣src="`` followed by ``␣next="..."`` reads as a ``src`` whose value
      is ``␣next=``. Such a "value" starts with a blank, so a value starting with a blank is rewritten
      only where the attribute is certainly real (`_InTag.starts_attribute`), and the search goes on inside
      it, so the real ``next`` attribute is still seen. Removing one is harmless either way: the quotes
      on both sides go, which joins two values;
    * text in comments and raw text (``<style>``): nothing is removed there (`_RawText`), so no ``-->``
      or ``</style>`` can be forged by joining text; a URL-like string there may be made absolute.
    """
    html = _rewrite_attributes(html, census, resolver, options)
    return _absolutize_links(html, resolver) if options.absolutize else html


class _InTag:
    """Whether positions, visited in increasing order, lie in a tag: the last ``<`` or ``>`` before
    each is a ``<``. Only the text since the previous position is searched."""

    __slots__ = ("_name_end", "inside", "opened")

    def __init__(self) -> None:
        self.inside = False
        self.opened = -1  # where the last "<" is
        self._name_end = (-1, -1)  # (a "<", where the first blank or quote after it is)

    def at(self, html: bytes, searched: int, position: int) -> bool:
        """``html[searched:position]`` is the text not searched yet."""
        last_open, last_close = html.rfind(b"<", searched, position), html.rfind(b">", searched, position)
        if last_open != last_close:  # both -1: no bracket, the state carries over
            self.inside = last_open > last_close
        if last_open >= 0:
            self.opened = last_open
        return self.inside

    def starts_attribute(self, html: bytes, at: int) -> bool:
        """Whether the ``␣name="`` at ``at``, in the tag last visited, certainly starts an attribute:
        it follows the closing quote of another (values have their quotes escaped) or the tag name."""
        if html[at - 1 : at] == b'"':
            return True
        if self._name_end[0] != self.opened:  # once per tag: a long tag is not searched again
            found = _NAME_END.search(html, self.opened + 1)
            self._name_end = (self.opened, len(html) if found is None else found.start())
        return self._name_end[1] >= at


_NAME_END = re.compile(rb'[\t\n\f\r "]')


# Where the HTML parser reads text, not markup, in serialised HTML (foreign-content <style> and the
# like are removed by the sanitiser: lexbor writes their text unescaped too, which a browser reads as markup).
_RAW_TEXT_START = re.compile(rb"<!--|<(style|xmp|noembed|noframes|plaintext|script|iframe)(?=[\t\n\f\r />])")
_COMMENT_END = re.compile(rb"--!?>")


class _RawText:
    """Comments and raw-text element content of serialised HTML, found lazily in document order: asked
    about increasing positions, it searches the text no further than the last one asked about.

    A region starts only outside tags: an attribute name may hold "<!--" or "<style".
    """

    def __init__(self, html: bytes) -> None:
        self._html = html
        self._start = self._end = 0  # the region [start, end) found last
        self._more = True

    def contains(self, position: int) -> bool:
        while self._end <= position and self._more:
            self._find(self._end)
        return self._start <= position < self._end

    def _find(self, after: int) -> None:
        html, tag = self._html, _InTag()
        searched = after  # a region ends with ">": outside any tag
        while (match := _RAW_TEXT_START.search(html, searched)) is not None:
            if tag.at(html, searched, match.start()):
                searched = match.start()  # its "<" is in a tag; the search goes on after it
                tag.at(html, searched, searched + 1)
                searched += 1
                continue
            name = match.group(1)
            if name is None:  # a comment: lexbor never writes "-->" or "--!>" inside one
                end = _COMMENT_END.search(html, match.end())
                self._start, self._end = match.start(), len(html) if end is None else end.end()
            else:  # raw text: after the start tag (whose attributes are markup), to its end tag
                content = html.find(b">", match.end()) + 1 or len(html)
                closer = None
                if name != b"plaintext":
                    closer = re.compile(rb"</" + name + rb"[\t\n\f\r />]", re.IGNORECASE).search(html, content)
                self._start, self._end = content, len(html) if closer is None else closer.start()
            return
        self._more = False


class _Remove:
    """`_url_attribute`'s answer for an attribute to remove."""


_REMOVE = _Remove()
_LINK = b' href="'


def _absolutize_links(html: bytes, resolver: Resolver) -> bytes:
    """``href`` values starting "/" or "./": a page has thousands (the rest, a few, are
    `_rewrite_attributes`'s). A constant prefix makes each absolute: to a browser the concatenation means
    what the reference meant against the base (it removes dot segments itself; "/\\" is a host like
    "//"). Splitting on the attribute leaves two searches and a comparison per link to Python."""
    parts = html.split(_LINK)
    if len(parts) == 1:
        return html
    origin, directory, scheme = (
        _escape_value(resolver.origin_prefix),
        _escape_value(resolver.directory_prefix),
        _escape_value(resolver.scheme_prefix),
    )
    # The separator goes with the prefix that follows it: one piece for both.
    to_origin, to_directory, to_scheme = _LINK + origin, _LINK + directory, _LINK + scheme
    pieces = [parts[0]]
    append = pieces.append
    inside = False
    before = parts[0]
    for part in itertools.islice(parts, 1, None):
        # In a tag when the last "<" or ">" before the link is a "<"; no bracket: as before.
        last_open = before.rfind(b"<")
        if last_open >= 0:
            inside = before.find(b">", last_open) < 0
        elif b">" in before:
            inside = False
        before = part
        if not inside:
            append(_LINK)
            append(part)
        elif part.startswith(b"./"):
            skip = 2
            while part.startswith(b"./", skip):
                skip += 2
            append(to_directory)
            append(part[skip:])
        elif part.startswith(b"/"):
            append(to_scheme if part.startswith((b"/", b"\\"), 1) else to_origin)
            append(part)
        else:
            append(_LINK)
            append(part)
    return b"".join(pieces)


# Attribute names as lexbor writes them: anything but blanks, "/", ">" and "=".
_NAME = r"[^\t\n\f\r />=]"


def _suspect_style() -> str:
    """A lookahead, after ``style``, for a value holding one of `sanitize.STYLE_SUSPECTS`: runs of
    bytes that start none are skipped whole, so a page's many harmless styles cost little."""
    suspects = "(?i:" + "|".join(re.escape(word.decode()) for word in sanitize.STYLE_SUSPECTS) + ")"
    initials = {chr(word[0]) for word in sanitize.STYLE_SUSPECTS}
    others = re.escape("".join(sorted(initials | {c.upper() for c in initials})))
    return f'(?=="(?:[^"<>{others}]++|(?!{suspects})[^"<>])*+{suspects})'


@functools.lru_cache(maxsize=64)
def _attribute_pattern(names: frozenset[str], *, handlers: bool, namespaced: bool) -> re.Pattern[bytes]:
    """`` name="value"`` for the attributes in ``names``; also ``on*`` handlers and namespaced
    ``*:*href`` when asked. ``href`` only with values `_url_attribute` could change (not "/", "./",
    "#", which are `_absolutize_links`'s and never script URLs, nor plain http(s) URLs); ``style``
    only with a suspect value."""
    alternatives = [sanitize.trie_pattern(sorted(names - {"href", "style"}))]
    if "href" in names:
        alternatives.append(r'href(?!="(?:/|\./|#|(?i:https?)://[^"\x00-\x20\x7f\\]*"))')
    if "style" in names:
        alternatives.append("style" + _suspect_style())
    if handlers:
        alternatives.append(f"on{_NAME}*")
    if namespaced:
        # xlink:href and its kin (SVG, MathML); "<" is left out of the name so that the match never
        # hides the start of a tag from `_InTag`.
        alternatives.append(r'[^\t\n\f\r />="<]*:[^\t\n\f\r />="<]*href')
    # A look at the first two letters first: most blanks in a page are between words, and a test of two
    # character sets is much cheaper than trying the alternatives (every name has two letters or more).
    initials = sorted({name[0] for name in names} | ({"o"} if handlers else set()))
    seconds = sorted({name[1] for name in names} | ({"n"} if handlers else set()))
    guard = f"(?=[{re.escape(''.join(initials))}][{re.escape(''.join(seconds))}])" if not namespaced else ""
    return re.compile(f' {guard}({"|".join(alternatives)})="([^"<>]*)"'.encode())


def _rewrite_attributes(html: bytes, census: frozenset[str], resolver: Resolver, options: RewriteOptions) -> bytes:
    """URL attributes (``src``, ``srcset``, the census's rare ones, ``xlink:href``, ``href`` but the
    commonest), and when sanitising ``on*``, ``ping`` and scripted ``style``: one regular expression
    pass, with Python work only for the attributes found (a page has a few per image)."""
    clean = options.sanitize
    names = {"href", "src", *sanitize.rare_url_attributes(census), *sanitize.SRCSET_ATTRIBUTES}
    if clean:
        names |= {"ping", "style"}
    namespaced = bool(census & {"svg", "math"})
    search = _attribute_pattern(frozenset(names), handlers=clean, namespaced=namespaced).search
    raw_text: _RawText | None = None
    pieces: list[bytes] = []
    kept = searched = 0  # end of the text copied into `pieces`; end of the text searched for brackets
    tag = _InTag()
    match = search(html)
    while match is not None:
        at, value_at = match.start(), match.start(2)
        in_tag = tag.at(html, searched, at)
        searched = value_at
        value = match.group(2)
        # A value starting with a blank may be the next attribute's name (see `_rewrite_serialised`).
        maybe_name = value.startswith(b" ")
        resume = value_at if maybe_name else match.end()
        if in_tag:
            name = match.group(1).decode("utf-8", "replace")
            replaced = _attribute(name, value, names, resolver, options)
            if replaced is _REMOVE:
                raw_text = raw_text or _RawText(html)
                if not raw_text.contains(at):
                    pieces.append(html[kept:at])
                    kept = resume = match.end()
            elif isinstance(replaced, bytes) and (not maybe_name or tag.starts_attribute(html, at)):
                pieces += (html[kept:value_at], replaced)
                kept = resume = match.end(2)
        match = search(html, resume)
    if not pieces:
        return html
    pieces.append(html[kept:])
    return b"".join(pieces)


def _attribute(
    name: str, value: bytes, names: set[str], resolver: Resolver, options: RewriteOptions
) -> bytes | _Remove | None:
    if name in sanitize.SRCSET_ATTRIBUTES:
        return _srcset_attribute(name, value, resolver, options)
    if name == "style":
        return _REMOVE if sanitize.is_unsafe_style(_unescape_value(value)) else None
    if options.sanitize and (name == "ping" or (name not in names and name.startswith("on"))):
        return _REMOVE
    return _url_attribute(name, value, resolver, options.sanitize, options.absolutize)


_ENTITY = re.compile(r"&(amp|quot|lt|gt|nbsp);")
_ENTITIES = {"amp": "&", "quot": '"', "lt": "<", "gt": ">", "nbsp": "\xa0"}


def _unescape_value(raw: bytes) -> str:
    """A serialised attribute value as the parser holds it (lexbor escapes exactly these five)."""
    text = raw.decode("utf-8", "replace")
    return _ENTITY.sub(lambda match: _ENTITIES[match[1]], text) if "&" in text else text


def _escape_value(text: str) -> bytes:
    """``text`` escaped as lexbor escapes an attribute value."""
    if not text.isascii() or "&" in text or '"' in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
        text = text.replace("\xa0", "&nbsp;")
    return text.encode("utf-8", "replace")


def _url_attribute(name: str, raw: bytes, resolver: Resolver, clean: bool, absolutize: bool) -> bytes | _Remove | None:
    """The new serialised value of URL attribute ``name``: None to keep it, `_REMOVE` to remove it."""
    value = _unescape_value(raw)
    absolute = resolver.absolute(value) if absolutize else value
    # Whatever a browser resolves to http(s) is no script; anything else gets the real check.
    if clean and not (absolute or "").startswith(("https:", "http:")) and sanitize.is_unsafe_url(name, value):
        return _REMOVE
    if absolute is not None and absolute != value:
        return _escape_value(absolute)
    return None


def _srcset_attribute(name: str, raw: bytes, resolver: Resolver, options: RewriteOptions) -> bytes | _Remove | None:
    parsed = parse_srcset(_unescape_value(raw))
    candidates = parsed
    if options.sanitize:
        candidates = [c for c in candidates if not sanitize.is_unsafe_url(name, c.url)]
        if parsed and not candidates:
            return _REMOVE
    if options.absolutize:
        candidates = [Candidate(resolver.absolute(c.url) or c.url, c.descriptor) for c in candidates]
    return _escape_value(serialize_srcset(candidates)) if candidates != parsed else None
