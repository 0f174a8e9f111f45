"""URLs inside fetched pages: resolving references, reading ``srcset``, spotting unsafe schemes.

Pure functions over strings (no I/O); `proxy.rewrite` applies them to a parsed page.

Two ways to resolve a reference, because they serve different ends:

* `Resolver.absolute` makes an attribute value absolute so that the page works out of context (inside a
  popup). Browsers will parse the result again, so it only has to *mean* the same URL. A page holds
  thousands of links, so the common shapes (already absolute, ``//host/...``, ``/path``, ``./Title``) are
  resolved with string operations; anything unusual goes through yarl.
* `Resolver.canonical` gives the URL an image is classified (and cached) under. It is exactly
  ``yarl.URL(base).join(yarl.URL(ref))``, the URL aiohttp will request, so the page proxy, the cache and
  ``POST /api/v1/classify`` agree on one spelling. The joins are kept (bounded, least recently used out)
  across pages: the same images recur on many pages, and the same page is fetched again.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

import yarl

__all__ = [
    "Candidate",
    "Resolver",
    "clean_reference",
    "parse_srcset",
    "serialize_srcset",
    "url_scheme",
]

# Browsers strip leading/trailing C0 controls and spaces and drop every tab and newline before parsing
# a URL (WHATWG URL standard), so "java\nscript:" is a javascript: URL. Match that before any check.
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# Characters a browser would percent-encode, strip or reinterpret ("\" is "/" in http URLs): a reference
# holding any of them takes the exact (yarl) path.
_UNUSUAL = re.compile(r"[\x00-\x20\x7f\\]")
_HTTP = frozenset({"http", "https"})

# One srcset candidate: a URL (a run of non-whitespace) and, unless the URL ended with a comma,
# descriptors up to the next comma outside parentheses (HTML standard, "parse a srcset attribute").
_SRCSET_URL = re.compile(r"[\t\n\f\r ,]*([^\t\n\f\r ]+)")
_SRCSET_DESCRIPTORS = re.compile(r"(?:[^,(]|\([^)]*(?:\)|\Z))*")
_BLANKS = re.compile(r"[\t\n\f\r ]+")
_DESCRIPTOR = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)([wxh])")
# Candidates "url" or "url descriptor" joined by ", ", with no blank, comma or parenthesis inside either:
# the HTML standard's parser reads these as the plain split does.
_PLAIN_SRCSET = re.compile(r"[^\t\n\f\r ,]+(?: [^\t\n\f\r ,()]+)?(?:, [^\t\n\f\r ,]+(?: [^\t\n\f\r ,()]+)?)*")


def clean_reference(value: str) -> str:
    """``value`` as a browser's URL parser sees it: outer controls and spaces trimmed, tabs and newlines
    removed."""
    value = value.strip(_C0_AND_SPACE)
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "").replace("\n", "").replace("\r", "")
    return value


def url_scheme(value: str) -> str | None:
    """The lower-cased scheme of an attribute value, or None for a relative reference."""
    match = _SCHEME.match(clean_reference(value))
    return match.group()[:-1].lower() if match else None


class Resolver:
    """Resolves references found in one document against its base URL."""

    def __init__(self, base: yarl.URL) -> None:
        if not base.absolute or not base.scheme:
            raise ValueError(f"base URL must be absolute: {str(base)!r}")
        base = base.with_fragment(None)  # never part of a resolved reference (yarl would keep it)
        self.base = base
        self._scheme = base.scheme
        origin = f"{base.scheme}://{base.raw_authority}"
        path = base.raw_path or "/"
        self._origin = origin
        self._directory = origin + path[: path.rfind("/") + 1]
        self._document = origin + path
        # Prefixes that make the commonest references absolute by concatenation (see `absolute`).
        self.scheme_prefix = f"{base.scheme}:"  # for "//host/path"
        self.origin_prefix = origin  # for "/path"
        self.directory_prefix = self._directory  # for "./name" with the "./" removed, and "name"
        self._canonical: dict[str, str | None] = {}

    def join(self, ref: str) -> yarl.URL | None:
        """``ref`` resolved with yarl, as aiohttp would; None when yarl cannot parse it."""
        return _join(self.base, ref)

    def canonical(self, ref: str) -> str | None:
        """The http(s) URL an image reference is classified under (without its fragment), or None for
        anything else: data: URLs, other schemes, unparseable references."""
        try:
            return self._canonical[ref]
        except KeyError:
            pass
        result = None
        if ref.lstrip(_C0_AND_SPACE)[:5].lower() != "data:":  # can be long, and is never classified
            # Shared by every page: the same images (and the same pages, fetched again) recur.
            result = _canonical(self.base, ref) if len(ref) <= _SHARED_REF_LENGTH else _join_canonical(self.base, ref)
        self._canonical[ref] = result
        return result

    def absolute(self, ref: str) -> str | None:
        """``ref`` made absolute for use out of context; None when it cannot be parsed.

        Same-document references ("#note-1", "") are returned unchanged: once the page stands alone
        (its ``<base>`` removed) they still point into the page itself, which is what their author meant.
        """
        usual = _UNUSUAL.search(ref) is None
        value = ref if usual else clean_reference(ref)
        if not value or value[0] == "#":
            return value
        if usual or _UNUSUAL.search(value) is None:
            fast = self._fast_absolute(value)
            if fast is not None:
                return fast
        url = self.join(value)
        return None if url is None else str(url)

    def _fast_absolute(self, value: str) -> str | None:
        first = value[0]
        if first == "/":
            return f"{self._scheme}:{value}" if value.startswith("//") else self._origin + value
        if first == "?":
            return self._document + value
        if first != ".":
            scheme = _SCHEME.match(value)
            if scheme is not None:
                # "http:foo" is relative to an http base (URL standard); everything else with a
                # scheme is already absolute.
                if scheme.group()[:-1].lower() in _HTTP and not value.startswith("//", scheme.end()):
                    return None
                return value
        # A relative path. Leading "./" (Parsoid writes every link so) is dropped; other dot segments
        # are left to yarl. Both only for readability: a browser removes dot segments when it parses
        # the concatenation too.
        while value.startswith("./"):
            value = value[2:]
        if value.startswith("../") or "/." in value:
            return None
        return self._directory + value


# References longer than this are resolved each time, not kept in the shared cache.
_SHARED_REF_LENGTH = 2048


def _join(base: yarl.URL, ref: str) -> yarl.URL | None:
    cleaned = clean_reference(ref)
    if base.scheme in _HTTP:
        # The URL standard treats "\" as "/" in http(s) URLs; yarl does not.
        cleaned = cleaned.replace("\\", "/")
    try:
        return base.join(yarl.URL(cleaned))
    except (ValueError, TypeError, UnicodeError):
        return None


def _join_canonical(base: yarl.URL, ref: str) -> str | None:
    url = _join(base, ref)
    if url is not None and url.scheme in _HTTP and url.raw_host:
        return str(url.with_fragment(None))
    return None


_canonical = functools.lru_cache(maxsize=8192)(_join_canonical)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One image candidate of a ``srcset`` attribute."""

    url: str
    descriptor: str  # as written: "2x", "320w", "" (none), or something invalid

    def size(self) -> tuple[Literal["w", "x"], float] | None:
        """("w", width) or ("x", density); None when the descriptors are invalid (the HTML standard
        then ignores the candidate). A candidate without descriptors is 1x."""
        return _size(self.descriptor)


@functools.lru_cache(maxsize=1024)  # pages repeat a few descriptors ("1.5x", "2x", "320w") endlessly
def _size(descriptor: str) -> tuple[Literal["w", "x"], float] | None:
    if not descriptor:
        return ("x", 1.0)
    found: dict[str, float] = {}
    for token in _split_blanks(descriptor):
        match = _DESCRIPTOR.fullmatch(token)
        if match is None or match.group(2) in found:
            return None
        value = float(match.group(1))
        if value <= 0 or (match.group(2) == "w" and not match.group(1).isdigit()):
            return None
        found[match.group(2)] = value
    if "w" in found and "x" in found:
        return None
    if "w" in found:
        return ("w", found["w"])
    if "h" in found:
        return None  # a height alone is invalid
    return ("x", found.get("x", 1.0))


def _split_blanks(text: str) -> list[str]:
    """Splits on ASCII whitespace only, as HTML does (a no-break space is part of a word)."""
    return [part for part in _BLANKS.split(text) if part]


def parse_srcset(value: str, limit: int | None = None) -> list[Candidate]:
    """The candidates of a ``srcset`` value, in order; at most ``limit`` of them.

    Follows the HTML standard's tokenisation (commas inside URLs are kept; a URL ending in commas has
    no descriptors; descriptors end at a comma outside parentheses) without its validation, so garbage
    yields candidates rather than errors. Linear in ``len(value)``.
    """
    if _PLAIN_SRCSET.fullmatch(value):
        # What nearly every page writes ("a.png 1x, b.png 2x"): the same candidates, by splitting.
        plain = [Candidate(*item.partition(" ")[::2]) for item in value.split(", ", limit or -1)]
        return plain[:limit] if limit is not None else plain
    candidates: list[Candidate] = []
    position = 0
    end = len(value)
    while position < end and (limit is None or len(candidates) < limit):
        url_match = _SRCSET_URL.match(value, position)
        if url_match is None:
            break
        url = url_match.group(1)
        position = url_match.end()
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            descriptors = _SRCSET_DESCRIPTORS.match(value, position)
            assert descriptors is not None  # the pattern also matches the empty string
            descriptor = " ".join(_split_blanks(descriptors.group()))
            position = descriptors.end() + 1  # past the comma
        if url:
            candidates.append(Candidate(url, descriptor))
    return candidates


def serialize_srcset(candidates: list[Candidate]) -> str:
    """A ``srcset`` value for ``candidates``; parses back to the same candidates."""
    return ", ".join(f"{c.url} {c.descriptor}" if c.descriptor else c.url for c in candidates)
