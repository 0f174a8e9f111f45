"""What a proxied page may keep: the policy behind `proxy.rewrite`'s ``sanitize`` option.

The page is served with ``Content-Security-Policy: sandbox; default-src 'none'`` already, so nothing
here is the only line of defence; it removes active content so that the HTML is also safe to show
where that header is lost (saved to disk, inserted into another document by a userscript).

Removed: ``<script>``, ``<iframe>``, ``<embed>``, ``<frame>``/``<frameset>``, ``<template>`` (inert, only
scripts read it, and its content is not reachable for cleaning), ``<portal>``/``<fencedframe>``,
``<meta http-equiv=refresh|set-cookie>``, ``<link>`` that fetches or runs something (import, preload,
prefetch, modulepreload, prerender, preconnect, dns-prefetch, manifest, serviceworker), SVG
``<animate>``/``<set>`` that could rewrite a link target, ``<param>``, and in SVG/MathML the elements
whose text the serialiser writes unescaped (``<style>``...); every ``on*`` attribute; ``ping``;
``javascript:``/``vbscript:`` URLs anywhere, and ``data:`` URLs except images in image attributes;
``style`` attributes that hold script (``expression(``, ``javascript:``, ``-moz-binding``, ``behavior``).
``<object>``/``<applet>`` are replaced by their fallback content, which is what a browser shows when it
cannot run them. ``<form>`` stays: the sandbox blocks submission, and its text is page content.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from proxy.urls import url_scheme

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser, LexborNode

__all__ = [
    "CENSUS_TAGS",
    "SRCSET_ATTRIBUTES",
    "STYLE_SUSPECTS",
    "is_unsafe_style",
    "is_unsafe_url",
    "rare_url_attributes",
    "remove_unsafe_elements",
    "tag_census",
    "trie_pattern",
    "unsafe_selectors",
]

SRCSET_ATTRIBUTES = frozenset({"srcset", "data-srcset"})
# Attributes whose URL an image is drawn from: data:image/... is fine there (CSP allows img-src data:).
_IMAGE_URL_ATTRIBUTES = frozenset({"src", "data-src", "poster", "lowsrc", "dynsrc", "srcset", "data-srcset"})

_REMOVED_ELEMENTS = (
    "script", "iframe", "embed", "frame", "frameset", "template", "portal", "fencedframe",
    "param", "meta", "link", "animate", "set",
)  # fmt: skip
_UNWRAPPED_ELEMENTS = ["object", "applet"]
# lexbor writes the text of these unescaped wherever they are (as the HTML standard's serialiser does),
# and a browser reads such text as raw text only in HTML: inside SVG or MathML it is markup again, so
# "<svg><style>&lt;img onerror=...&gt;" would come back to life. Removed there (mutation XSS).
_RAW_TEXT_ELEMENTS = ("style", "xmp", "noembed", "noframes", "plaintext")
_FOREIGN_ROOTS = ("svg", "math")
# Attributes holding one URL, besides href and src (everywhere), data-src (lazy loading) and background
# (legacy, on anything): they mean something only on some elements, so are looked for only in pages
# that have those. `resource` and `about` (RDFa) are identifiers, not links: left alone.
_URL_ATTRIBUTE_TAGS = {
    "poster": ("video",),
    "action": ("form",),
    "formaction": ("button", "input"),
    "cite": ("blockquote", "q", "del", "ins"),
    "longdesc": ("img", "frame", "iframe"),
    "lowsrc": ("img",),
    "dynsrc": ("img",),
    "data": ("object",),
    "codebase": ("object", "applet"),
    "manifest": ("html",),
    "icon": ("command", "menuitem"),
}
# The tags `tag_census` looks for; "!doctype", html, head, body tell a document from a fragment.
CENSUS_TAGS = sorted(
    {"noscript", "base", "!doctype", "head", "body", *_FOREIGN_ROOTS, *_RAW_TEXT_ELEMENTS}
    | {*_REMOVED_ELEMENTS, *_UNWRAPPED_ELEMENTS}
    | {tag for tags in _URL_ATTRIBUTE_TAGS.values() for tag in tags}
)


def trie_pattern(words: list[str]) -> str:
    """An alternation of ``words`` factored by common prefixes: the regex engine then tries a few
    branches at each "<" instead of every word."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and "" not in node else f"(?:{'|'.join(branches)})"
        return body + "?" if "" in node else body

    return emit(tree)


# Run over the lower-cased page: case-insensitive matching is several times slower.
_CENSUS = re.compile(rb"<(" + trie_pattern(CENSUS_TAGS).encode() + rb")(?=[\t\n\f\r />])")
# A style attribute holding none of these (in any case) is safe: `is_unsafe_style` looks for keywords
# containing one, after undoing the CSS escapes and comments that could hide them.
STYLE_SUSPECTS = (b"expression", b"script", b"binding", b"behavior", b"\\", b"/*")
_FETCHING_LINK_TYPES = frozenset(
    {
        "import",
        "preload",
        "prefetch",
        "modulepreload",
        "prerender",
        "preconnect",
        "dns-prefetch",
        "manifest",
        "serviceworker",
    }
)
_ACTIVE_META = frozenset({"refresh", "set-cookie"})
_ANIMATED_LINK_ATTRIBUTES = frozenset({"href", "xlink:href"})
_SCRIPT_SCHEMES = frozenset({"javascript", "vbscript", "livescript", "mocha"})
_IMAGE_MEDIA_TYPE = re.compile(r"data:[\t\n\f\r ]*image/", re.IGNORECASE)
# CSS escapes ("\65 xpression", "java\script") and comments can hide a keyword from a plain search.
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6}[\t\n\f\r ]?|.)", re.DOTALL)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
_STYLE_SCRIPT = re.compile(r"expression\s*\(|javascript:|vbscript:|-moz-binding|behavior\s*:", re.IGNORECASE)


def tag_census(html: bytes) -> frozenset[str]:
    """Which of the tags this module (and `proxy.rewrite`) cares about occur in ``html`` (UTF-8): one
    regular expression pass, so that absent ones cost no search of the parsed tree."""
    return frozenset(name.decode() for name in set(_CENSUS.findall(html.lower())))


def unsafe_selectors(census: frozenset[str], also: Collection[str] = ()) -> list[str]:
    """The selectors `remove_unsafe_elements` queries for a page with this `tag_census` (empty: the page
    has no active element), plus the element names in ``also``."""
    selectors = [name for name in _REMOVED_ELEMENTS if name in census] + list(also)
    selectors += [
        f"{root} {name}" for root in _FOREIGN_ROOTS if root in census for name in _RAW_TEXT_ELEMENTS if name in census
    ]
    return selectors


def remove_unsafe_elements(
    tree: LexborHTMLParser,
    census: frozenset[str],
    *,
    also: Collection[str] = (),
    found: Sequence[LexborNode] | None = None,
) -> None:
    """Removes active elements from ``tree`` in place (see the module docstring), and the elements
    named in ``also``; ``census`` is the page's `tag_census`. One selector query for them all: each
    query walks the whole tree.

    ``found``: the elements a walk of the tree found earlier for `unsafe_selectors` (a superset, in
    document order, such as what one larger query found, see `proxy.pageimages.scan_images`): then no
    query is made, and those that match are removed."""
    if census.intersection(_UNWRAPPED_ELEMENTS):
        # Fallback content first, so that an <embed> or <script> inside an <object> is found below.
        tree.unwrap_tags(_UNWRAPPED_ELEMENTS)
    selectors = unsafe_selectors(census, also)
    if not selectors:
        return
    nodes = tree.css(", ".join(selectors)) if found is None else _matching(found, census, also)
    removed: set[int] = set()
    # Last first, so that an element inside one removed later is removed before it (a removed element
    # is freed with everything in it); a query lists an element once per selector it matches.
    for node in reversed(nodes):
        if node.mem_id not in removed and _is_active(node):
            removed.add(node.mem_id)
            node.decompose()


def _matching(nodes: Sequence[LexborNode], census: frozenset[str], also: Collection[str]) -> list[LexborNode]:
    """Those of ``nodes`` that `unsafe_selectors` select: by name (what a type selector compares), and
    for raw-text elements by the selector itself (it asks for an SVG/MathML ancestor)."""
    names = {name for name in _REMOVED_ELEMENTS if name in census} | set(also)
    raw_text = [name for name in _RAW_TEXT_ELEMENTS if name in census]
    foreign = ", ".join(f"{root} {name}" for root in _FOREIGN_ROOTS if root in census for name in raw_text)
    chosen = []
    for node in nodes:
        # One that left the tree since (a lazy placeholder made eager is unwrapped) is removed all the
        # same: that changes nothing (lexbor frees no node before the document), and tells no
        # fragment's top-level element (which has no parent either) from it.
        name = node.tag
        if name in names or (foreign and name in raw_text and node.css_matches(foreign)):
            chosen.append(node)
    return chosen


def _is_active(node: LexborNode) -> bool:
    name = node.tag
    if name == "meta":
        return (node.attributes.get("http-equiv") or "").strip().lower() in _ACTIVE_META
    if name == "link":
        return not _FETCHING_LINK_TYPES.isdisjoint((node.attributes.get("rel") or "").lower().split())
    if name in ("animate", "set"):
        target = node.attributes.get("attributeName") or node.attributes.get("attributename") or ""
        return target.strip().lower() in _ANIMATED_LINK_ATTRIBUTES
    return True


def rare_url_attributes(census: frozenset[str]) -> frozenset[str]:
    """The single-URL attributes other than href and src worth looking for in a page with this
    `tag_census`: those tied to elements it has, and the few that any element may carry."""
    names = {"data-src", "background"}
    for name, tags in _URL_ATTRIBUTE_TAGS.items():
        if census.intersection(tags):
            names.add(name)
    return frozenset(names)


def is_unsafe_url(attribute: str, value: str) -> bool:
    """True when ``value`` of URL attribute ``attribute`` must not be kept."""
    scheme = url_scheme(value)
    if scheme is None:
        return False
    if scheme in _SCRIPT_SCHEMES:
        return True
    if scheme == "data":
        return attribute not in _IMAGE_URL_ATTRIBUTES or _IMAGE_MEDIA_TYPE.match(value.strip()) is None
    return False


def is_unsafe_style(value: str) -> bool:
    """True when a ``style`` attribute could run script in some browser."""
    if "\\" in value:
        value = _CSS_ESCAPE.sub(_unescape_css, value)
    if "/*" in value:
        value = _CSS_COMMENT.sub("", value)
    return _STYLE_SCRIPT.search(value) is not None


def _unescape_css(match: re.Match[str]) -> str:
    escaped = match.group(1)
    if len(escaped) > 1 or escaped in "0123456789abcdefABCDEF":
        try:
            return chr(int(escaped.strip(), 16))
        except (ValueError, OverflowError):
            return "\ufffd"
    return escaped
