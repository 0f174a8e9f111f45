"""What a proxied page may keep: the policy behind `proxy.rewrite`'s ``sanitize`` option.

The page is served with ``Content-Security-Policy: sandbox; default-src 'none'`` already, so nothing
here is the only line of defence; it removes active content so that the HTML is also safe to show
where that header is lost (saved to disk, inserted into another document by a userscript).

Removed: ``<script>``, ``<iframe>``, ``<embed>``, ``<frame>``/``<frameset>``, ``<template>`` (inert, only
scripts read it, and its content is not reachable for cleaning), ``<portal>``/``<fencedframe>``,
``<meta http-equiv=refresh|set-cookie>``, ``<link>`` that fetches or runs something (import, preload,
prefetch, modulepreload, prerender, preconnect, dns-prefetch, manifest, serviceworker), SVG
``<animate>``/``<set>`` that could rewrite a link target, ``<param>``; every ``on*`` attribute
(`strip_event_handlers`, on the serialised page); ``ping``;
``javascript:``/``vbscript:`` URLs anywhere, and ``data:`` URLs except images in image attributes;
``style`` attributes that hold script (``expression(``, ``javascript:``, ``-moz-binding``, ``behavior``).
``<object>``/``<applet>`` are replaced by their fallback content, which is what a browser shows when it
cannot run them. ``<form>`` stays: the sandbox blocks submission, and its text is page content.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from proxy.urls import url_scheme

if TYPE_CHECKING:
    from selectolax.lexbor import LexborHTMLParser

__all__ = [
    "SRCSET_ATTRIBUTES",
    "SUSPICIOUS_STYLE_SELECTOR",
    "is_unsafe_style",
    "is_unsafe_url",
    "rare_url_attributes",
    "remove_unsafe_elements",
    "strip_event_handlers",
    "tag_census",
]

SRCSET_ATTRIBUTES = frozenset({"srcset", "data-srcset"})
# Attributes whose URL an image is drawn from: data:image/... is fine there (CSP allows img-src data:).
_IMAGE_URL_ATTRIBUTES = frozenset({"src", "data-src", "poster", "lowsrc", "dynsrc", "srcset", "data-srcset"})

_REMOVED_ELEMENTS = (
    "script", "iframe", "embed", "frame", "frameset", "template", "portal", "fencedframe",
    "param", "meta", "link", "animate", "set",
)  # fmt: skip
_UNWRAPPED_ELEMENTS = ["object", "applet"]
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
# "!doctype", html, head, body tell a document from a fragment.
_CENSUS_TAGS = sorted(
    {"svg", "math", "noscript", "base", "!doctype", "head", "body", *_REMOVED_ELEMENTS, *_UNWRAPPED_ELEMENTS}
    | {tag for tags in _URL_ATTRIBUTE_TAGS.values() for tag in tags}
)


def _trie_pattern(words: list[str]) -> str:
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
_CENSUS = re.compile(rb"<(" + _trie_pattern(_CENSUS_TAGS).encode() + rb")(?=[\t\n\f\r />])")
# Style attributes that could hide script: keywords, and CSS escapes or comments that could hide one.
SUSPICIOUS_STYLE_SELECTOR = ", ".join(
    f'[style*="{needle}" i]' for needle in ("expression", "script", "binding", "behavior", "\\\\", "/*")
)
# A real attribute value has "<" and ">" escaped; refusing them keeps a stray quote in a comment or
# <style> from stretching a match over markup.
_HANDLER = re.compile(r' on[^\t\n\f\r =>]*="[^"<>]*"')
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


def remove_unsafe_elements(tree: LexborHTMLParser, census: frozenset[str]) -> None:
    """Removes active elements from ``tree`` in place (see the module docstring); ``census`` is the
    page's `tag_census`."""
    if census.intersection(_UNWRAPPED_ELEMENTS):
        # Fallback content first, so that an <embed> or <script> inside an <object> is found below.
        tree.unwrap_tags(_UNWRAPPED_ELEMENTS)
    for name in _REMOVED_ELEMENTS:
        if name not in census:
            continue
        for node in tree.css(name):
            if name == "meta":
                active = (node.attributes.get("http-equiv") or "").strip().lower() in _ACTIVE_META
            elif name == "link":
                active = not _FETCHING_LINK_TYPES.isdisjoint((node.attributes.get("rel") or "").lower().split())
            elif name in ("animate", "set"):
                target = node.attributes.get("attributeName") or node.attributes.get("attributename") or ""
                active = target.strip().lower() in _ANIMATED_LINK_ATTRIBUTES
            else:
                active = True
            if active:
                node.decompose()


def rare_url_attributes(census: frozenset[str]) -> frozenset[str]:
    """The single-URL attributes other than href and src worth looking for in a page with this
    `tag_census`: those tied to elements it has, and the few that any element may carry."""
    names = {"data-src", "background"}
    for name, tags in _URL_ATTRIBUTE_TAGS.items():
        if census.intersection(tags):
            names.add(name)
    return frozenset(names)


def strip_event_handlers(html: str) -> str:
    """``html`` (as serialised by lexbor) without any ``on*`` attribute.

    Serialised HTML is regular enough to do this on the text, in one linear pass instead of a walk
    over every element: an attribute is always written ``␣name="value"``, values have ``"``, ``<``
    and ``>`` escaped, and text has ``<`` and ``>`` escaped. So a match is an attribute exactly when
    the last ``<`` or ``>`` before it is a ``<``. (Inside <style> or comments, where nothing is
    escaped, a false match only removes text that looked like a handler.)
    """
    pieces: list[str] = []
    kept = 0  # end of the text already copied into `pieces`
    scanned = 0  # the region before this has been searched for "<" and ">"
    in_tag = False
    for match in _HANDLER.finditer(html):
        at = match.start()
        last_open, last_close = html.rfind("<", scanned, at), html.rfind(">", scanned, at)
        if last_open != -1 or last_close != -1:
            in_tag = last_open > last_close
        scanned = match.end()
        if in_tag:
            pieces.append(html[kept:at])
            kept = match.end()
    if not pieces:
        return html
    pieces.append(html[kept:])
    return "".join(pieces)


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
