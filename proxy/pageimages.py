"""The images of a parsed page: every shape they come in, their URLs, and manual invert markup.

Shapes (all seen in real Wikipedia output; ``tests/fixtures/pages`` has one of each):

* ``<img src srcset>``, also inside ``<picture>``, whose ``<source srcset>`` URLs are the same image;
* lazy placeholders with ``data-src``/``data-srcset``: mobile-html's ``span.pcs-lazy-load-placeholder``
  and MobileFrontend's ``span.lazy-image-placeholder``, whose real ``<img>`` sits in the ``<noscript>``
  just before it (one image, two elements); ``img[data-src]`` of generic lazy loaders.

An image is classified under one URL: the candidate drawn closest to its displayed size (the
``width``/``data-width`` it is shown at; 1x without one), resolved as `proxy.urls.Resolver.canonical`.
Manual markup (``invert``, ``invert-not``, their ``-auto`` forms, Wikipedia's ``skin-invert``,
``skin-invert-image`` and ``notheme``) on the image or its nearest marked ancestor decides instead;
so does a ``<picture>`` that ships its own dark-mode source.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from proxy.urls import Candidate, Resolver, parse_srcset

__all__ = [
    "INVERT_MARKUP",
    "INVERT_NOT_MARKUP",
    "PLACEHOLDER_CLASSES",
    "ImageOccurrence",
    "ImageRef",
    "image_ref",
    "is_placeholder",
    "scan_images",
]

INVERT_MARKUP = frozenset({"invert", "invert-auto", "skin-invert", "skin-invert-image"})
INVERT_NOT_MARKUP = frozenset({"invert-not", "invert-not-auto", "notheme"})
PLACEHOLDER_CLASSES = ("pcs-lazy-load-placeholder", "lazy-image-placeholder")
_PLACEHOLDER_SELECTOR = ", ".join(f".{name}" for name in PLACEHOLDER_CLASSES)
_IMAGE_SELECTOR = f"img, {_PLACEHOLDER_SELECTOR}"
_MAX_URLS = 32  # URLs kept per ImageRef: enough for every real srcset, bounded for hostile ones
_MAX_CANDIDATES = 64  # srcset candidates considered when choosing the classification URL
_DEFAULT_WIDTH = 320.0  # displayed width assumed when the markup gives none (a typical thumbnail)
_LENGTH = re.compile(r"[\t\n\f\r ]*([0-9]+(?:\.[0-9]+)?)(?:px)?[\t\n\f\r ]*$")
_STYLE_WIDTH = re.compile(r"(?:^|;)\s*width\s*:\s*([0-9]+(?:\.[0-9]+)?)px", re.IGNORECASE)
_STYLE_HEIGHT = re.compile(r"(?:^|;)\s*height\s*:\s*([0-9]+(?:\.[0-9]+)?)px", re.IGNORECASE)
_DARK_SCHEME = "prefers-color-scheme"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of a page, however many elements show it."""

    url: str  # absolute http(s) URL to classify: the candidate closest to the displayed size
    manual: bool | None  # True: the page marks it "invert"; False: "don't invert"; None: no markup
    urls: tuple[str, ...] = ()  # every http(s) URL seen for it (src, srcset, <source>, placeholder)
    width: int | None = None  # displayed size in CSS pixels, when the markup says
    height: int | None = None
    markup: str | None = None  # the class that decided `manual`, e.g. "skin-invert"
    count: int = 1  # elements showing it


@dataclass(slots=True)
class ImageOccurrence:
    """One image as it appears at one place in the page: an element, or two showing the same
    picture (``<noscript><img></noscript>`` and the placeholder after it). Mutable: rewriting
    replaces the placeholder."""

    image: LexborNode | None  # the <img>, if there is one
    placeholder: LexborNode | None  # the lazy-loading placeholder, if there is one
    url: str
    urls: list[str]
    width: float | None
    height: float | None
    manual: bool | None = None
    markup: str | None = None
    dark_variant: bool = False  # a <picture> with a <source media="(prefers-color-scheme: dark)">

    def elements(self) -> Iterator[LexborNode]:
        if self.image is not None:
            yield self.image
        if self.placeholder is not None:
            yield self.placeholder


def scan_images(
    tree: LexborHTMLParser,
    resolver: Resolver,
    *,
    ours: tuple[str, str],
    collect_urls: bool,
    also: str = "",
    also_found: list[LexborNode] | None = None,
) -> Iterator[ImageOccurrence]:
    """Image occurrences in document order, lazily (callers can stop early). ``ours`` are the invert
    and invert-not class names the rewriter writes: on an element it marked (``data-invertornot``)
    they are its own earlier verdict, anywhere else manual markup. With ``collect_urls`` each
    occurrence lists all its URLs, which costs a URL join per candidate.

    ``also``: a selector list for elements someone else needs (the sanitiser), found by the same walk
    of the tree (each walk of a large page costs about as much as a selector query). When the scan
    starts, ``also_found`` receives a superset of them in document order: every element found that is
    not an <img>."""
    manual = _ManualMarkup(ours)
    paired: set[int] = set()  # placeholders already reported with the <noscript><img> before them
    for node in manual.images_and_candidates(tree, also, also_found):
        if node.mem_id in paired:
            continue
        if node.tag == "img":
            placeholder = _placeholder_after_noscript(node)
            if placeholder is not None:
                if placeholder.mem_id in paired:
                    placeholder = None  # a second <img> in the same <noscript>: the placeholder is taken
                else:
                    paired.add(placeholder.mem_id)
            occurrence = _occurrence(node, placeholder, resolver, collect_urls)
        else:
            occurrence = _occurrence(None, node, resolver, collect_urls)
        if occurrence is None:
            continue
        for element in occurrence.elements():
            occurrence.manual, occurrence.markup = manual.of(element)
            if occurrence.manual is not None:
                break
        if occurrence.manual is None and occurrence.dark_variant:
            # The page ships its own dark-mode picture: inverting that would undo it.
            occurrence.manual, occurrence.markup = False, _DARK_SCHEME
        yield occurrence


def _placeholder_after_noscript(image: LexborNode) -> LexborNode | None:
    """MobileFrontend's placeholder for an <img> inside <noscript>: the next element after it."""
    noscript = image.parent
    if noscript is None or noscript.tag != "noscript":
        return None
    sibling = noscript.next
    while sibling is not None and not sibling.is_element_node:
        if not sibling.is_empty_text_node and not sibling.is_comment_node:
            return None
        sibling = sibling.next
    if sibling is not None and is_placeholder(sibling):
        return sibling
    return None


def is_placeholder(node: LexborNode) -> bool:
    """A lazy-loading placeholder: it stands for an <img> that a script creates from its data-*."""
    classes = (node.attrs.get("class") or "").split()
    return any(name in classes for name in PLACEHOLDER_CLASSES)


def _occurrence(
    image: LexborNode | None, placeholder: LexborNode | None, resolver: Resolver, collect_urls: bool
) -> ImageOccurrence | None:
    # Candidates in order of preference: what the browser shows now (src, srcset), what a lazy
    # loader would show (data-src, data-srcset), then the other sources of a <picture>.
    groups: list[list[Candidate]] = []
    width = height = None
    dark_variant = False
    if image is not None:
        attributes = image.attributes
        groups.append(_candidates(attributes.get("src"), attributes.get("srcset")))
        groups.append(_candidates(attributes.get("data-src"), attributes.get("data-srcset")))
        width, height = _length(attributes.get("width")), _length(attributes.get("height"))
        parent = image.parent
        if parent is not None and parent.tag == "picture":
            for source in parent.css("source"):
                groups.append(_candidates(None, source.attributes.get("srcset")))
                media = (source.attributes.get("media") or "").lower()
                dark_variant = dark_variant or (_DARK_SCHEME in media and "dark" in media)
    if placeholder is not None:
        attributes = placeholder.attributes
        groups.append(_candidates(attributes.get("data-src"), attributes.get("data-srcset")))
        style = attributes.get("style") or ""
        width = width or _length(attributes.get("data-width")) or _style_length(_STYLE_WIDTH, style)
        height = height or _length(attributes.get("data-height")) or _style_length(_STYLE_HEIGHT, style)
    chosen: str | None = None
    for group in groups:
        # Choose by descriptors first, resolving only the choice: most images need one URL join.
        remaining = list(group)
        while chosen is None and remaining:
            candidate = _closest(remaining, width)
            chosen = resolver.canonical(candidate.url)
            remaining.remove(candidate)
        if chosen is not None:
            break
    if chosen is None:
        return None  # no http(s) URL at all: data: images and the like are not classified
    urls: list[str] = []
    if collect_urls:
        seen = {chosen: None}
        for group in groups:
            for candidate in group:
                url = resolver.canonical(candidate.url)
                if url is not None and len(seen) < _MAX_URLS:
                    seen[url] = None
        urls = list(seen)
    return ImageOccurrence(image, placeholder, chosen, urls, width, height, dark_variant=dark_variant)


def _candidates(src: str | None, srcset: str | None) -> list[Candidate]:
    candidates = [Candidate(src, "")] if src else []
    if srcset:
        candidates.extend(parse_srcset(srcset, limit=_MAX_CANDIDATES))
    return candidates


def _closest(candidates: list[Candidate], width: float | None) -> Candidate:
    """The candidate that would be drawn closest to the displayed width (1x without one); the first
    one when no descriptor can be read."""
    best: tuple[float, int] | None = None
    chosen = candidates[0]
    for order, candidate in enumerate(candidates):
        size = candidate.size()
        if size is None:
            continue
        kind, value = size
        if width is not None:
            distance = abs((value if kind == "w" else value * width) - width)
        elif kind == "x":
            distance = abs(value - 1.0)
        else:  # width descriptors and no displayed width: prefer density descriptors, then ~320px
            distance = 1e6 + abs(value - _DEFAULT_WIDTH)
        if best is None or (distance, order) < best:
            best, chosen = (distance, order), candidate
    return chosen


def _length(value: str | None) -> float | None:
    match = _LENGTH.match(value) if value else None
    return float(match.group(1)) if match else None


def _style_length(pattern: re.Pattern[str], style: str) -> float | None:
    match = pattern.search(style)
    return float(match.group(1)) if match else None


class _ManualMarkup:
    """Manual invert markup on an element or its nearest marked ancestor (memoised, so a page's
    ancestors are each read once). Only the few elements one selector query finds are read at all."""

    def __init__(self, ours: tuple[str, str]) -> None:
        self._invert = INVERT_MARKUP | {ours[0]}
        self._invert_not = INVERT_NOT_MARKUP | {ours[1]}
        self._ours = set(ours)
        self._known: dict[int, tuple[bool | None, str | None]] = {}
        # Every markup name holds one of these: an element whose class holds none (and that is no
        # placeholder with a data-class) has no markup, and is not read.
        self._needles: list[str] = []
        for name in sorted(self._invert | self._invert_not, key=len):
            if not any(needle in name for needle in self._needles):
                self._needles.append(name)
        self._candidates: set[int] | None = None  # None: read every element

    def images_and_candidates(
        self, tree: LexborHTMLParser, also: str = "", also_found: list[LexborNode] | None = None
    ) -> list[LexborNode]:
        """The page's images and placeholders, in document order. The same selector query (each walks
        the whole tree) finds the elements that may carry markup, and those of ``also`` (see
        `scan_images`)."""
        markup = [*(f'[class*="{_css_string(needle)}"]' for needle in self._needles), "[data-class]"]
        extra = f", {also}" if also else ""
        nodes = None
        if all(self._needles):  # (an empty class name would be in every class)
            with contextlib.suppress(SelectolaxError):  # a class name lexbor's selectors cannot express
                nodes = tree.css(f"{_IMAGE_SELECTOR}, {', '.join(markup)}{extra}")
        if nodes is None:
            if also and also_found is not None:
                also_found += tree.css(also)
            return tree.css(_IMAGE_SELECTOR)  # and every element is read for markup
        images: list[LexborNode] = []
        self._candidates = set()
        for node in nodes:
            identity = node.mem_id
            if identity in self._candidates:
                continue  # listed once per selector it matches
            self._candidates.add(identity)
            if node.tag == "img":
                images.append(node)
                continue
            if also_found is not None:
                also_found.append(node)
            # A placeholder's class names one of PLACEHOLDER_CLASSES (in any case, in quirks mode): only
            # those are worth the selector match (the other elements found are usually many more).
            if "placeholder" in (node.attrs.get("class") or "").lower() and node.css_matches(_PLACEHOLDER_SELECTOR):
                images.append(node)
        return images

    def of(self, node: LexborNode) -> tuple[bool | None, str | None]:
        chain: list[LexborNode] = []
        current: LexborNode | None = node
        result: tuple[bool | None, str | None] = (None, None)
        while current is not None and current.is_element_node:
            known = self._known.get(current.mem_id)
            if known is not None:
                result = known
                break
            chain.append(current)
            current = current.parent
        for element in reversed(chain):
            identity = element.mem_id
            if self._candidates is None or identity in self._candidates:
                own = self._own(element)
                if own[0] is not None:
                    result = own
            self._known[identity] = result
        return result

    def _own(self, element: LexborNode) -> tuple[bool | None, str | None]:
        attributes = element.attrs  # one attribute at a time: most ancestors have none of interest
        classes = (attributes.get("class") or "").split()
        if any(name in classes for name in PLACEHOLDER_CLASSES):
            classes += (attributes.get("data-class") or "").split()  # the classes its <img> will get
        if "data-invertornot" in attributes:
            classes = [name for name in classes if name not in self._ours]  # our own earlier mark
        # "Don't invert" wins over "invert" on one element: wrongly inverting a photo is worse.
        for name in classes:
            if name in self._invert_not:
                return False, name
        for name in classes:
            if name in self._invert:
                return True, name
        return None, None


def _css_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def image_ref(url: str, occurrences: list[ImageOccurrence]) -> ImageRef:
    """The `ImageRef` for all occurrences of one classification URL."""
    urls: dict[str, None] = {}
    for occurrence in occurrences:
        for seen in occurrence.urls:
            if len(urls) >= _MAX_URLS:
                break
            urls[seen] = None
    # Manual only if every occurrence carries markup: one unmarked occurrence needs a verdict.
    manual = None if any(o.manual is None for o in occurrences) else occurrences[0].manual
    markup = occurrences[0].markup if manual is not None else None
    width = next((o.width for o in occurrences if o.width is not None), None)
    height = next((o.height for o in occurrences if o.height is not None), None)
    return ImageRef(
        url=url,
        manual=manual,
        urls=tuple(urls),
        width=None if width is None else round(width),
        height=None if height is None else round(height),
        markup=markup,
        count=len(occurrences),
    )
