"""How much work lexbor's tree builder could do on a page, estimated before parsing it.

lexbor has no nesting limit (browsers cap it: Blink flattens beyond 512 levels), and many tree-building
steps walk the stack of open elements: "is there a <p> in button scope" for every block start tag, the
search for an element to close for every end tag. On deeply nested input that is quadratic: 100,000
nested ``<div>`` take 24 s to parse, ``<span>``x20,000 followed by ``</x>``x20,000 take 1.7 s. The bound
used here is work <= depth x tags, with depth the deepest stack the tree builder reaches.

`estimate_nesting` computes an upper estimate of that depth in a few vectorised passes over the bytes
(no Python loop per tag). It has to stay an *upper* estimate whatever the page does, so an end tag
lowers it only when it certainly is one, in the data state:

* not inside a comment, bogus comment, ``<!DOCTYPE>``, CDATA section or raw-text element
  (``<script>``, ``<style>``, ``<textarea>``...) whose opener is itself certainly real;
* not inside a tag: there is a ``>`` between the previous ``<`` and the end tag, that ``>`` is not
  possibly inside a quoted attribute value, and neither is the end tag. "Possibly inside" is judged
  from the nearest quote before the position: if that quote could open a value (its previous
  non-blank character is ``=``), the position may be inside it. That over-approximates every quoted
  value, so its mistakes only make the estimate larger;
* it closes something of its own name counted open before (``</x>`` with no ``<x>`` closes nothing).
  Names are compared as read, ASCII letters lower-cased; a name holding a NUL byte (which the parser
  reads as U+FFFD) matches nothing, and counts as never closed.

Start tags count unless certainly inside a comment or raw text, with three exceptions, each sound:
void elements (outside SVG/MathML, where ``<link>`` or ``<source>`` do nest); self-closing tags where
the content is certainly SVG/MathML; and elements the tree builder closes by itself when another of
their kind starts (``<li>``, ``<p>``, ``<td>``, ``<option>``...). One of those can only nest inside
another behind an element that is counted (a ``<ul>``, a ``<button>``), so leaving them out at most
halves the depth; tables and selects count for the levels their parts add. `NestingEstimate.work`
is therefore a bound up to a small constant factor (tests check real depth <= 3 x estimate + 8):
good enough to refuse pages that would take seconds, not to predict milliseconds.

The passes cost a few milliseconds per megabyte: one comparison pass over the bytes for "<", ">" and
quotes, then arrays of a few entries per tag (tag names read 8 bytes at a time, running counts of
quotes and ">" instead of binary searches). As they read every tag name anyway, they also say which of
a given set of names occur (`estimate_nesting`'s ``names``), which spares large pages a second pass
for `proxy.sanitize.tag_census`.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["AttributeEstimate", "NestingEstimate", "estimate_attributes", "estimate_nesting"]

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]

_NAME_WINDOW = 32  # tag names longer than this never match an end tag (counted, never closed)
_LOOKBACK = 8  # blanks allowed between "=" and a quote before we assume a value may open there

_LT, _GT, _SLASH, _BANG, _QUESTION = 0x3C, 0x3E, 0x2F, 0x21, 0x3F
_DQ, _SQ, _EQ, _DASH = 0x22, 0x27, 0x3D, 0x2D


def _byte_table(members: bytes) -> Bools:
    table = np.zeros(256, dtype=bool)
    table[list(members)] = True
    return table


_BLANK = _byte_table(b"\t\n\f\r ")
_NAME_END = _byte_table(b"\x00\t\n\f\r />")
_LETTER = _byte_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = np.arange(256, dtype=np.uint8)
_LOWER[0x41:0x5B] |= 0x20


class _NameSet:
    """A set of tag names (at most 8 bytes each), tested against names read as 8-byte words. Each set
    is one bit of `_Tokens.sets`: a token is looked up once, in the table of all the sets."""

    members: ClassVar[dict[int, int]] = {}  # name word -> bits of the sets holding it
    _count: ClassVar[int] = 0

    def __init__(self, *names: str) -> None:
        self.bit = np.uint16(1 << _NameSet._count)
        _NameSet._count += 1
        for name in names:
            word = _name_word(name)
            self.members[word] = self.members.get(word, 0) | int(self.bit)


@functools.cache
def _name_table() -> tuple[Words, npt.NDArray[np.uint16]]:
    words = np.array(sorted(_NameSet.members), dtype=np.uint64)
    return words, np.array([_NameSet.members[int(word)] for word in words], dtype=np.uint16)


def _sets_of(words: Words) -> npt.NDArray[np.uint16]:
    """The bits of the `_NameSet`s holding each word (0: none)."""
    table, bits = _name_table()
    index = np.minimum(np.searchsorted(table, words), table.size - 1)
    result: npt.NDArray[np.uint16] = np.where(table[index] == words, bits[index], np.uint16(0))
    return result


def _name_word(name: str | bytes) -> int:
    raw = name.encode() if isinstance(name, str) else name
    assert len(raw) <= 8, name
    return int.from_bytes(raw.ljust(8, b"\0"), "little")


_VOID = _NameSet(
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img",
    "input", "keygen", "link", "meta", "param", "source", "track", "wbr",
)  # fmt: skip
# Void elements that also break out of SVG/MathML, so they never nest even there.
_BREAKOUT_VOID = _NameSet("br", "embed", "hr", "img", "meta")
_RAW_TEXT = _NameSet("script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title")
_FOREIGN = _NameSet("svg", "math")
_IGNORES_RAW_TEXT = _NameSet("select", "frameset")
# Start tags after which content may no longer be SVG/MathML: those that break out of foreign content,
# and integration points, whose content is HTML (names cut to 8 bytes: "foreignObject" is
# "foreigno"; a longer name sharing the prefix only counts as one more exit).
_LEAVES_FOREIGN = _NameSet(
    "b", "big", "blockquo", "body", "br", "center", "code", "dd", "div", "dl", "dt", "em", "embed",
    "h1", "h2", "h3", "h4", "h5", "h6", "head", "hr", "i", "img", "li", "listing", "menu", "meta",
    "nobr", "ol", "p", "pre", "ruby", "s", "small", "span", "strong", "strike", "sub", "sup", "table",
    "tt", "u", "ul", "var", "font", "foreigno", "desc", "title", "mi", "mo", "mn", "ms", "mtext", "annotati",
)  # fmt: skip
# Elements the tree builder closes by itself when another of their kind starts (<li>, <p>, <td>...)
# are not counted at all: one can only nest inside another behind some element that is counted
# (a <ul>, a <table>...), so the depth is at most about twice the count. Tables and selects count
# for the levels their parts can add (table > tbody > tr > td, select > optgroup > option).
_UNCOUNTED = _NameSet(
    "p", "li", "option", "optgroup", "tbody", "thead", "tfoot", "tr", "td", "th", "caption", "colgroup",
    "rb", "rt", "rtc", "rp",
)  # fmt: skip
_WEIGHTS = {_NameSet("table"): 4, _NameSet("select"): 3}
# Formatting elements (see `_clone_work`), and the start tags after which an end tag may leave one in the
# list of active formatting elements: markers (applet... th), scope boundaries (table; MathML/SVG ones
# need an <svg> or <math> first), and modes that ignore end tags (select, frameset, template contents).
_FORMATTING = _NameSet("a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u")
_SHIELDS = _NameSet(
    "applet", "caption", "marquee", "object", "template", "td", "th", "table", "select", "svg", "math", "frameset",
)  # fmt: skip
_A, _NOBR = _name_word("a"), _name_word("nobr")
_NAME_A, _NAME_NOBR = _NameSet("a"), _NameSet("nobr")
_SCRIPT = _name_word("script")
_PLAINTEXT = (_name_word("plaintex"), _name_word("t"))

_COMMENT_END = re.compile(rb"--!?>")
_CDATA_END = re.compile(rb"\]\]>")
# One start tag, exactly as the HTML tokenizer reads it; group 1 is "/" when the tag is self-closing.
_START_TAG = re.compile(
    rb"<[a-zA-Z][^\t\n\f\r />]*+"
    rb"(?:[\t\n\f\r ]++|/(?!>)|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rb"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:\"[^\"]*+\"|'[^']*+'|[^\t\n\f\r >]*+))?+)*+"
    rb"(/?)>"
)
# Elements the parser always has (html, head, body).
_IMPLIED_DEPTH = 3


@dataclass(frozen=True, slots=True)
class NestingEstimate:
    """Upper estimate of the tree builder's deepest stack of open elements, and the tag count."""

    depth: int
    tags: int
    names: frozenset[str] = frozenset()  # those asked about that occur in the page (`estimate_nesting`)
    attributes: AttributeEstimate = field(default_factory=lambda: AttributeEstimate(0, 0))

    @property
    def work(self) -> int:
        """Stack steps the tree builder could take: at most one walk of the stack per tag."""
        return self.depth * self.tags


@dataclass(frozen=True, slots=True)
class _Tokens:
    """Every "<" that starts markup, in document order, with what follows it."""

    at: Ints  # byte offsets of the "<"
    start: Bools  # "<name"
    end: Bools  # "</name"
    opener: Bools  # "<!", "<?", "</" + other: comments, doctype, bogus comments
    comment: Bools  # "<!--"
    word: Words  # the lower-cased tag name's first 8 bytes, zero padded
    longer: Ints  # 0 for names of at most 8 bytes, else an id shared by equal longer names
    whole: Bools  # a start or end tag whose name ended within _NAME_WINDOW bytes
    plaintext: Bools  # "<plaintext": raw text to the end of the document

    sets: npt.NDArray[np.uint16]  # which `_NameSet`s hold `word`, as bits

    def named(self, names: _NameSet) -> Bools:
        return self.named_prefix(names) & (self.longer == 0)

    def named_prefix(self, names: _NameSet) -> Bools:
        """Names whose first 8 bytes are in ``names`` (longer names included: a superset)."""
        result: Bools = self.whole & ((self.sets & names.bit) != 0)
        return result

    def same_name(self, index: int) -> Bools:
        return self.whole & (self.word == self.word[index]) & (self.longer == self.longer[index])


def estimate_nesting(data: bytes, *, names: Collection[str] = ()) -> NestingEstimate:
    """Estimates the nesting depth lexbor would reach on ``data`` (UTF-8 HTML). Linear time.

    ``names`` (lower-case tag names, or "!doctype"): the estimate says which of them occur right after
    a "<" and are then ended by a blank, "/" or ">", as a regular expression over the page would, but
    from the tag names this reads anyway.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    # Padding lets windows read past either end without bounds checks.
    buf = np.concatenate([np.zeros(_LOOKBACK, np.uint8), raw, np.zeros(_NAME_WINDOW + 4, np.uint8)])
    special = np.flatnonzero((raw == _LT) | (raw == _GT) | (raw == _DQ) | (raw == _SQ))
    kind = raw[special]
    tokens, token_special = _tokenize(buf, special, kind)
    at = tokens.at
    present = _present(buf, tokens, names)
    if at.size == 0:
        return NestingEstimate(_IMPLIED_DEPTH, 0, present)  # no tag, so no attribute either
    specials = _Specials(buf, special, kind)
    gts = special[specials.gt_index]
    tags = _which(tokens.start | tokens.end)
    attributes, per_tag = _estimate_attributes(buf, special, specials, token_special[tags])
    in_tag = _inside_tag(token_special, specials)
    foreign_from = _first(at[_which(tokens.start & tokens.named(_FOREIGN))], default=raw.size)
    # In a <select> or a <frameset> the tree builder ignores <style>, <title>... so their content is
    # markup after all; from the first of those on, raw text is only possibly text.
    raw_text_from = _first(at[_which(tokens.start & tokens.named(_IGNORES_RAW_TEXT))], default=raw.size)
    ignored, uncertain = _regions(data, tokens, gts, in_tag, min(foreign_from, raw_text_from))
    attribute_count = np.zeros(at.size, dtype=np.int64)
    attribute_count[tags] = per_tag
    clones = _clone_work(tokens, attribute_count, ignored, tokens.whole & ~in_tag & ~uncertain & ~ignored)
    attributes = AttributeEstimate(attributes.most, attributes.work + clones)

    void = tokens.named(_VOID)
    # In SVG/MathML any tag that does not break out of it nests: <option>, <td>... are counted there.
    maybe_foreign = at >= foreign_from
    counted = ~tokens.named(_UNCOUNTED) | maybe_foreign
    counted_start = tokens.start & ~ignored & counted
    certain_end = tokens.end & tokens.whole & ~in_tag & ~uncertain & ~ignored & counted & ~void
    # Outside SVG/MathML void elements never nest; inside, those that do not break out of foreign
    # content do (<link>, <source>...).
    nests = counted_start & ~(void & (~maybe_foreign | tokens.named(_BREAKOUT_VOID)))
    # A self-closing tag ("<path/>") opens nothing, but only in foreign content: "<i/>" is an open <i>.
    candidates = np.flatnonzero(nests & _certainly_foreign(data, buf, tokens, gts, in_tag | uncertain | ignored))
    if candidates.size:
        nests[candidates[_self_closing(data, buf, at[candidates], gts)]] = False

    weight = np.ones(at.size, dtype=np.int64)
    for heavy, levels in _WEIGHTS.items():
        weight[_which(tokens.named(heavy))] = levels
    delta = _matched(tokens, nests, certain_end, weight)
    depth = int(np.cumsum(delta).max(initial=0))
    return NestingEstimate(depth + _IMPLIED_DEPTH, int(at.size), present, attributes)


def _present(buf: npt.NDArray[np.uint8], tokens: _Tokens, names: Collection[str]) -> frozenset[str]:
    """Which of ``names`` some token has, read exactly (a name is cut at a blank, "/" or ">")."""
    if not names:
        return frozenset()
    raws = [name.encode() for name in names]
    assert all(raw.islower() and len(raw) <= _NAME_WINDOW for raw in raws), names
    table = np.unique(np.array([_name_word(raw[:8]) for raw in raws], dtype=np.uint64))
    index = np.minimum(np.searchsorted(table, tokens.word), table.size - 1)
    hits = np.flatnonzero((table[index] == tokens.word) & ~tokens.end)  # names right after the "<"
    if hits.size == 0:
        return frozenset()
    # Few tokens are left: read their whole names and compare.
    rows, whole = _read_names(buf, tokens.at[hits] + _LOOKBACK + 1, _NAME_WINDOW)
    seen = {row.tobytes().rstrip(b"\0") for row in rows[_which(whole)]}
    return frozenset(name for name, raw in zip(names, raws, strict=True) if raw in seen)


def _certainly_foreign(data: bytes, buf: npt.NDArray[np.uint8], tokens: _Tokens, gts: Ints, unsure: Bools) -> Bools:
    """Tokens certainly inside SVG or MathML content: after a real <svg> or <math> start tag, with
    nothing since that could have left it (any end tag, a tag that breaks out of foreign content, an
    integration point such as <foreignObject> whose content is HTML)."""
    at = tokens.at
    entries = np.flatnonzero(tokens.start & tokens.named(_FOREIGN) & ~unsure)
    if entries.size == 0:
        return np.zeros(at.size, dtype=bool)
    entries = entries[_which(~_self_closing(data, buf, at[entries], gts))]  # "<svg/>" opens nothing
    exits = np.flatnonzero(tokens.end | (tokens.start & tokens.named_prefix(_LEAVES_FOREIGN)) | ~tokens.whole)
    index = np.arange(at.size)
    last_entry, last_exit = _last_before(entries, index), _last_before(exits, index)
    return (last_entry >= 0) & (last_entry > last_exit) & ~unsure


def _last_before(sorted_values: Ints, queries: Ints) -> Ints:
    """For each query, the largest value below it, or -1."""
    index = np.searchsorted(sorted_values, queries) - 1
    result = np.full(queries.size, -1, dtype=np.int64)
    found = _which(index >= 0)
    result[found] = sorted_values[index[found]]
    return result


def _tokenize(buf: npt.NDArray[np.uint8], special: Ints, kind: npt.NDArray[np.uint8]) -> tuple[_Tokens, Ints]:
    """The tokens, and for each its index in ``special`` (the offsets of every "<", ">" and quote)."""
    index = np.flatnonzero(kind == _LT)
    at = special[index]
    c1 = buf[at + _LOOKBACK + 1]
    c2 = buf[at + _LOOKBACK + 2]
    start = _LETTER[c1]
    end = (c1 == _SLASH) & _LETTER[c2]
    opener = (c1 == _BANG) | (c1 == _QUESTION) | ((c1 == _SLASH) & ~_LETTER[c2] & (c2 != _GT))
    keep = _which(start | end | opener)
    index, at, start, end, opener, c1, c2 = (
        index[keep],
        at[keep],
        start[keep],
        end[keep],
        opener[keep],
        c1[keep],
        c2[keep],
    )
    comment = (c1 == _BANG) & (c2 == _DASH) & (buf[at + _LOOKBACK + 3] == _DASH)
    name_at = at + _LOOKBACK + 1 + end
    word, whole = _read_words(buf, name_at)
    whole &= start | end
    plaintext = np.zeros(at.size, dtype=bool)
    # Names of 8 bytes or more are read further, and those past 8 bytes get an exact id of their own
    # (equal names, equal ids); most names are short.
    longer = np.zeros(at.size, dtype=np.int64)
    spill = np.flatnonzero(~whole & (start | end))
    if spill.size:
        rows, whole[spill] = _read_names(buf, name_at[spill], _NAME_WINDOW)
        plaintext[spill] = whole[spill] & (rows[:, 0] == _PLAINTEXT[0]) & (rows[:, 1] == _PLAINTEXT[1])
        past = np.flatnonzero((rows[:, 1] != 0) | ~whole[spill])
        if past.size:
            order = np.lexsort(rows[past].T[::-1])
            changed = np.ones(past.size, dtype=bool)
            changed[1:] = (rows[past][order][1:] != rows[past][order][:-1]).any(axis=1)
            longer[spill[past[order]]] = np.cumsum(changed)
    sets = _sets_of(word)
    return _Tokens(at, start, end, opener, comment, word, longer, whole, plaintext, sets), index


# Bytes that end a tag name, and constants for testing the 8 bytes of a word at once. A NUL byte
# does not end a name (the parser reads it as U+FFFD) but does end the word: a name holding one is
# never "whole", so it matches nothing (zero bytes also pad the page and each short name).
_STOPS = (0x09, 0x0A, 0x0C, 0x0D, 0x20, 0x2F, 0x3E)
_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


def _zero_bytes(words: Words) -> Words:
    """The top bit of each zero byte; exact up to the lowest one (borrows can flag bytes above it)."""
    flags: Words = (words - _ONES) & ~words & _HIGHS
    return flags


def _read_words(buf: npt.NDArray[np.uint8], name_at: Ints) -> tuple[Words, Bools]:
    """The first 8 bytes of the names at ``name_at``, lower-cased and cut at the first byte that ends a
    tag name, as words; and whether the name ended within them. Whole 8-byte words at a time (bit
    tricks across the bytes of a word): this runs over every tag of the page."""
    words: Words = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))[name_at]
    # A byte is an upper-case letter when it is at least "A" and below "[" with its top bit clear.
    low = words & _LOW7
    upper = (low + np.uint64(0x3F3F3F3F3F3F3F3F)) & ~(low + np.uint64(0x2525252525252525)) & ~words & _HIGHS
    words |= upper >> np.uint64(2)
    stops = np.zeros(words.size, dtype=np.uint64)
    for stop in _STOPS:
        stops |= _zero_bytes(words ^ (_ONES * np.uint64(stop)))
    ends = stops | _zero_bytes(words)
    first = ends & (~ends + np.uint64(1))  # the lowest byte that ends the word (exact)
    whole: Bools = (first & stops) != 0
    words &= (first >> np.uint64(7)) - np.uint64(1)  # no end: all ones, the whole word is name
    return words, whole


def _read_names(buf: npt.NDArray[np.uint8], name_at: Ints, width: int) -> tuple[Words, Bools]:
    """Names at ``name_at``, lower-cased, cut at the first byte that ends a tag name, as 8-byte words
    (one row each); and whether the name ended within ``width`` bytes. For the few long names."""
    window = sliding_window_view(buf, width)[name_at]
    upper = ((window >= 0x41) & (window <= 0x5A)).view(np.uint8)
    window = np.bitwise_or(window, upper * np.uint8(0x20))
    nul = window == 0  # ends the word, not the name (see _STOPS)
    stops = (window == 0x2F) | (window == 0x3E) | (window == 0x20) | nul
    stops |= (window >= 0x09) & (window <= 0x0D) & (window != 0x0B)  # tab, LF, FF, CR
    length = stops.argmax(axis=1)
    rows = np.arange(name_at.size)
    whole: Bools = stops[rows, length] & ~nul[rows, length]
    length[_which(~whole)] = width
    window *= (np.arange(width) < length[:, None]).view(np.uint8)
    words: Words = np.ascontiguousarray(window).view(np.dtype("<u8"))
    return words, whole


def _which(mask: Bools) -> Ints:
    """The indices where ``mask`` holds: ``values[_which(mask)]`` is ``values[mask]``, several times faster
    on numpy 2.x (boolean indexing takes a slow path; these arrays hold an entry per tag or per "<", ">"
    and quote of the page)."""
    return np.flatnonzero(mask)


def _running_count(flags: Bools, dtype: type[np.int32] | type[np.int64] = np.int32) -> npt.NDArray[Any]:
    """How many of ``flags`` are set up to and including each: ``np.cumsum`` over their bytes. Summing
    bools directly goes through a slow casting loop (several times slower on numpy 2.x; this runs over
    every "<", ">" and quote of the page)."""
    return np.cumsum(flags.view(np.int8), dtype=dtype)


def _first(positions: Ints, default: int) -> int:
    return int(positions[0]) if positions.size else default


class _Specials:
    """The "<", ">" and quotes of a page in order, with running counts: "the last quote before" a
    "<" or ">" is then an array lookup rather than a binary search."""

    def __init__(self, buf: npt.NDArray[np.uint8], special: Ints, kind: npt.NDArray[np.uint8]) -> None:
        is_gt = kind == _GT
        self.gts_before = _running_count(is_gt)  # ">" up to and including each special byte
        self.gt_index = np.flatnonzero(is_gt)
        self._quotes = []
        for quote in (_DQ, _SQ):
            is_quote = kind == quote
            opens = np.concatenate([[False], self._may_open(buf, special[_which(is_quote)])])
            self._quotes.append((_running_count(is_quote), opens))

    @staticmethod
    def _may_open(buf: npt.NDArray[np.uint8], quotes: Ints) -> Bools:
        # A quote may open a value when its previous non-blank byte is "=" (or when more than
        # _LOOKBACK blanks precede it). Blanks before a quote are rare: look further only for those.
        before = buf[quotes + _LOOKBACK - 1]
        opens = before == _EQ
        spaced = np.flatnonzero(_BLANK[before])
        if spaced.size:
            back = buf[(quotes[spaced] + _LOOKBACK - 2)[:, None] - np.arange(_LOOKBACK - 1)]
            solid = ~_BLANK[back]
            first_solid = solid.argmax(axis=1)
            opens[spaced] = ~solid.any(axis=1) | (back[np.arange(spaced.size), first_solid] == _EQ)
        return opens

    def may_open_through(self, index: Ints) -> Ints:
        """For special bytes (by index): how many quotes up to them may open a value (either kind)."""
        result = np.zeros(index.size, dtype=np.int64)
        for count, opens in self._quotes:
            result += _running_count(opens)[count[index]]
        return result

    def maybe_in_value(self, index: Ints) -> Bools:
        """For special bytes that are no quotes (by index): True where the nearest quote before, of
        either kind, may open a value; the byte may then be inside that value, as no quote of its kind
        closed it yet (an over-approximation of every quoted value)."""
        result = np.zeros(index.size, dtype=bool)
        for count, opens in self._quotes:
            result |= opens[count[index]]  # opens[0] is False: no quote before
        return result


def _inside_tag(token_special: Ints, specials: _Specials) -> Bools:
    """Tokens that may lie inside the attributes of an earlier tag (see the module docstring)."""
    result = specials.maybe_in_value(token_special)
    gts = specials.gts_before[token_special]
    result[1:] |= gts[1:] == gts[:-1]  # no ">" since the previous token
    has = _which(gts > 0)
    result[has] |= specials.maybe_in_value(specials.gt_index[gts[has] - 1])  # the last ">" before it
    return result


def _self_closing(data: bytes, buf: npt.NDArray[np.uint8], at: Ints, gts: Ints) -> Bools:
    """Which start tags end with "/>", read exactly (attribute values can hold "/>")."""
    index = np.searchsorted(gts, at)
    result = np.zeros(at.size, dtype=bool)
    maybe = np.flatnonzero(index < gts.size)
    maybe = maybe[buf[gts[index[maybe]] + _LOOKBACK - 1] == _SLASH]
    for i in maybe.tolist():
        match = _START_TAG.match(data, int(at[i]))
        result[i] = match is not None and match.group(1) == b"/"
    return result


def _regions(data: bytes, tokens: _Tokens, gts: Ints, in_tag: Bools, markup_from: int) -> tuple[Bools, Bools]:
    """Tokens certainly inside text-only regions (ignored) and tokens possibly inside one (uncertain).
    From ``markup_from`` on (foreign content, selects, framesets) raw text may be markup."""
    at = tokens.at
    raw_text = tokens.start & (tokens.named(_RAW_TEXT) | tokens.plaintext)
    kinds = np.flatnonzero(tokens.opener | raw_text)
    if kinds.size == 0:
        nothing = np.zeros(at.size, dtype=bool)
        return nothing, nothing
    size = len(data)
    comment_at = at[_which(tokens.comment)]
    comment_end = _EndFinder(data, _COMMENT_END)
    cdata_end = _EndFinder(data, _CDATA_END)
    closers: dict[tuple[int, int], Ints] = {}
    starts = at[kinds]
    ends = np.empty(kinds.size, dtype=np.int64)
    text_only = np.ones(kinds.size, dtype=bool)  # a real opener makes its region plain text
    for i, (index, position) in enumerate(zip(kinds.tolist(), starts.tolist(), strict=True)):
        if tokens.comment[index]:
            if data.startswith((b"<!-->", b"<!--->"), position):
                ends[i] = position + (5 if data[position + 4] == _GT else 6)
            else:
                ends[i] = comment_end.after(position + 4)
        elif tokens.opener[index]:
            ends[i] = _next_after(gts, position, size - 1) + 1  # bogus comment, doctype
            if position >= markup_from and data.startswith(b"<![CDATA[", position):
                # In SVG/MathML a CDATA section runs to "]]>"; in HTML it is a bogus comment to ">".
                ends[i] = max(ends[i], cdata_end.after(position + 9))
                text_only[i] = False
        else:
            name = (int(tokens.word[index]), int(tokens.longer[index]))
            if tokens.plaintext[index]:
                ends[i] = size
            else:
                if name not in closers:
                    closers[name] = at[_which(tokens.end & tokens.same_name(index))]
                ends[i] = _next_after(closers[name], position + 1, size)
            if position >= markup_from:
                text_only[i] = False  # e.g. <style>, <script>, <title> hold markup inside SVG/MathML
            elif name == (_SCRIPT, 0) and _next_after(comment_at, position, size) < ends[i]:
                # Escaped script data ("<!--" inside a script) can run past its first </script>.
                text_only[i] = False
                ends[i] = size
    # An opener inside an earlier region may be text, so its region is only possible, never certain.
    reach = np.maximum.accumulate(np.concatenate([[-1], ends[:-1]]))
    certain = text_only & (reach <= starts) & ~in_tag[kinds]
    sure, unsure = _which(certain), _which(~certain)
    ignored = _covered(at, starts[sure], ends[sure])
    uncertain = _covered(at, starts[unsure], ends[unsure])
    return ignored & ~uncertain, uncertain


class _EndFinder:
    """Finds the end of the region an opener starts, in linear time over all openers: an opener inside
    the previous region shares that region's end, so the text is searched only once."""

    def __init__(self, data: bytes, marker: re.Pattern[bytes]) -> None:
        self._data = data
        self._marker = marker
        self._found_start = -1
        self._found_end = -1

    def after(self, position: int) -> int:
        if self._found_start < position:
            match = self._marker.search(self._data, position)
            self._found_start, self._found_end = (
                (match.start(), match.end()) if match else (len(self._data), len(self._data))
            )
        return self._found_end


def _next_after(sorted_positions: Ints, position: int, default: int) -> int:
    index = int(np.searchsorted(sorted_positions, position))
    return int(sorted_positions[index]) if index < sorted_positions.size else default


def _covered(at: Ints, starts: Ints, ends: Ints) -> Bools:
    """Tokens strictly after some region's start and before its end."""
    covered = np.zeros(at.size, dtype=bool)
    if starts.size == 0:
        return covered
    reach = np.maximum.accumulate(ends)
    index = np.searchsorted(starts, at, side="left") - 1  # the last region starting before the token
    has = _which(index >= 0)
    covered[has] = reach[index[has]] > at[has]
    return covered


def _matched(tokens: _Tokens, opens: Bools, closes: Bools, weight: Ints) -> Ints:
    """+weight per counted start tag, -weight per end tag closing an element of its name that is
    counted open."""
    delta = np.zeros(tokens.at.size, dtype=np.int64)
    opened = _which(opens)
    delta[opened] = weight[opened]
    involved = np.flatnonzero(opens | (closes & tokens.whole))
    if involved.size == 0:
        return delta
    # One key per name. A short name's word starts with its first letter (the low byte, never zero);
    # longer names get their id shifted past that byte, and names too long to read whole never match:
    # each gets a key of its own beyond every id.
    key = tokens.word[involved].copy()
    longer = tokens.longer[involved]
    whole = tokens.whole[involved]
    named = _which(longer != 0)
    key[named] = longer[named].astype(np.uint64) << np.uint64(8)
    alone = np.flatnonzero(~whole)
    key[alone] = (np.uint64(tokens.at.size + 1) + alone.astype(np.uint64)) << np.uint64(8)
    order = np.argsort(key, kind="stable")  # by name, in document order within a name
    step = np.where(opens[involved], 1, -1).astype(np.int64)[order]
    key = key[order]
    first = np.ones(involved.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    segment = _running_count(first, np.int64) - 1  # int64: segment * big below can pass 2**31
    total = np.cumsum(step)
    local = total - (total - step)[_which(first)][segment]
    # Running minimum within each segment: shifting later segments far down keeps earlier ones out.
    big = 2 * (step.size + 2)
    low_water = np.minimum.accumulate(local - segment * big) + segment * big
    count = local - np.minimum(low_water, 0)  # elements of this name open, never below zero
    before = np.concatenate([[0], count[:-1]])
    before[_which(first)] = 0
    closed = involved[order[_which((step == -1) & (count < before))]]
    delta[closed] = -weight[closed]
    return delta


# Formatting elements (<a>, <b>, <font>...) stay in the tree builder's "list of active formatting elements"
# after they are closed implicitly (by </p>, say), and every later text or start tag "reconstructs" them:
# clones each that is no longer open, with all its attributes, into the tree. So one <b> with 4,000
# attributes before 10,000 "</p><p>y" (100 KB) builds 10,000 clones of it (17 s; at 5 MB memory runs
# out). The adoption agency (run by a formatting end tag, and by <a> or <nobr> while one is listed) clones
# them too, up to 8 times per entry. `_clone_work` follows the list over the formatting tags only (a
# Python loop, a few thousand steps on a large page), with the attribute count of each entry's tag.
_ADOPTION_CLONES = 8  # the adoption agency's outer loop: each entry cloned at most once per iteration
# A clone costs lexbor some 0.2 to 0.4 us per attribute (copied, not checked: linear) and as much for the
# element itself, over 100 times the 2 ns a unit of attribute work stands for: 500 <b a=N> before 800
# "</p><p>x" (11 KB) take 0.17 s to parse. A clone counts its attributes squared (what the tree holds)
# plus this much per attribute and per element.
_CLONE_COST = 64
# Start tags that pop nothing from the stack of open elements (phrasing elements and formatting ones but
# <a> and <nobr>, which may run the adoption agency), and those of them that are not void: these nest.
_INLINE = _NameSet(
    "span", "sup", "sub", "abbr", "cite", "dfn", "kbd", "mark", "q", "samp", "var", "time", "data", "label",
    "bdi", "bdo", "ins", "del",
)  # fmt: skip
_INLINE_VOID = _NameSet("img", "br", "wbr")
# Start tags that reconstruct nothing (blocks: the text after them does). Any other token may reconstruct
# once, after it (the text that follows), and start tags once more, before they insert their element.
_BLOCKS = _NameSet(
    "address", "article", "aside", "center", "details", "dialog", "dir", "div", "dl", "fieldset", "footer",
    "header", "hgroup", "main", "menu", "nav", "ol", "p", "section", "summary", "ul", "h1", "h2", "h3", "h4",
    "h5", "h6", "pre", "listing", "form", "li", "dd", "dt", "table", "hr", "tr", "td", "th", "tbody", "thead",
)  # fmt: skip


def _clone_work(tokens: _Tokens, attribute_count: Ints, ignored: Bools, certain: Bools) -> int:
    """An upper bound of the sum, over the clones of formatting elements the tree builder makes, of
    their attributes squared, plus `_CLONE_COST` per attribute and per clone.

    Entries enter the list at every formatting start tag that may be real (outside certain text-only
    regions; the "Noah's Ark" limit of three equal entries is ignored, which only over-counts). An entry
    leaves it only where the tree builder certainly removes it:

    * a certain end tag of its name, when the entry is the latest of that name, no start tag that may
      shield it came since (a marker hides it from the end tag, a <table> puts it out of scope, a
      <select> or <svg> makes end tags ignored or foreign), and fewer than 8 other elements started since
      (with 8 "special" elements open inside it, the adoption agency gives up and leaves a clone listed);
    * an <a> start tag removes the latest <a> entry, under the same shield condition.

    An entry is cloned only while it is not open. It certainly still is while every token since its
    start tag pops nothing below it: text, comments, start tags of `_INLINE` elements and formatting
    ones (but <a>, <nobr>), and end tags matching one of those started since (a well-nested pair: the
    end tag pops down to that element, which lies above the entry). From the first other token on, each
    token may reconstruct it (twice for start tags but blocks'); the adoption agency may clone every entry
    8 times.
    """
    formatting = tokens.whole & tokens.named(_FORMATTING) & ~ignored
    is_event = formatting & (tokens.start | tokens.end)
    if not is_event.any():
        return 0
    # Reconstructions up to each token: one after every token, one more at start tags but blocks' (and at
    # "</br>", which the tree builder takes for "<br>").
    weights = 1 + ((tokens.start & ~tokens.named(_BLOCKS)) | (tokens.end & tokens.named(_INLINE_VOID))).view(np.int8)
    reconstructions = np.concatenate([[0], np.cumsum(weights, dtype=np.int64)])  # before each token
    until, partner = _opened_until(tokens, formatting, ignored, certain)
    # Most formatting elements close where they opened: "<b>x</b>", a start and an end tag of its name that
    # pair up (`_opened_until`) with only tokens between that leave it open (so no shield, no "special"
    # element, no end tag of something opened before it), and fewer than 3 formatting start tags (so the
    # "Noah's Ark" clause cannot unlist it): the end tag's adoption agency finds it open, with nothing to
    # clone, and unlists it. Such a pair is never cloned and makes no other entry cloned: it leaves the
    # loop, but for the adoption agency an <a> or <nobr> start tag runs while one is listed: those
    # ("adopting") are looked at while one is.
    ends = np.flatnonzero(tokens.end & formatting & certain & (partner >= 0))
    opener: Ints = partner[ends]
    starts_before = _running_count(tokens.start & formatting)
    quiet = (until[opener] > ends) & (starts_before[ends - 1] - starts_before[opener] <= 2)
    ends, opener = ends[_which(quiet)], opener[_which(quiet)]
    is_event[ends] = False
    is_event[opener] = False
    adopting = np.sort(opener[_which(tokens.named(_NAME_A)[opener] | tokens.named(_NAME_NOBR)[opener])])
    events = np.flatnonzero(is_event)
    until = until[events].tolist()
    live = tokens.start & ~ignored
    shield_count = _running_count(live & tokens.named(_SHIELDS))
    shields = shield_count[events].tolist()
    # "Special" elements that may open inside an entry (the adoption agency's furthest block): any start
    # tag but formatting, void (never open outside SVG/MathML, where <svg> shields anyway) and phrasing ones.
    inner = _running_count(live & ~formatting & ~tokens.named(_VOID) & ~tokens.named(_INLINE))[events].tolist()
    # An entry: [cost, shields and inner elements before it, its start tag, the token from which it
    # may be closed (and cloned)].
    entries: dict[int, list[list[int]]] = {_A: [], _NOBR: []}  # by name, latest last
    listed_a, listed_nobr = entries[_A], entries[_NOBR]
    order: list[list[int]] = []  # entries, latest last, but those known to be closed from some token on
    total = listed = 0  # listed: the cost of cloning every entry once
    size = int(tokens.at.size)

    def unlist(entry: list[int], at: int) -> None:
        nonlocal total, listed
        listed -= entry[0]
        if at > entry[4]:  # from the token that may close it (and then reconstruct it) up to ``at``
            total += entry[0] * int(reconstructions[at] - reconstructions[entry[4]])

    def pop_after(earliest: int, at: int) -> None:
        """The adoption agency pops at most the entries started after the earliest listed one of its
        name (the element it closes is that entry's or a later clone of it)."""
        while order and order[-1][3] > earliest:  # each entry leaves ``order`` once: linear in all
            entry = order.pop()
            entry[4] = min(entry[4], at)

    def adopt(same: list[list[int]], index: int, word: int, shield: int) -> None:
        """An <a> or <nobr> start tag while one is listed: the adoption agency, then <a> unlists it."""
        nonlocal total
        total += listed * _ADOPTION_CLONES
        pop_after(same[0][3], index)
        if word == _A and same[-1][1] == shield:
            unlist(same.pop(), index)

    light_at, light_word = adopting.tolist(), tokens.word[adopting].tolist()
    light_shield = shield_count[adopting].tolist()
    light = 0  # the next of ``adopting``

    def adopt_before(index: int) -> int:
        """Runs the adopting start tags before ``index`` while an <a> or <nobr> is listed; skips the rest."""
        position = light
        while position < len(light_at) and light_at[position] < index and (listed_a or listed_nobr):
            word = light_word[position]
            if entries[word]:
                adopt(entries[word], light_at[position], word, light_shield[position])
            position += 1
        return bisect.bisect_left(light_at, index, position)

    starts, words, sure = tokens.start[events].tolist(), tokens.word[events].tolist(), certain[events].tolist()
    for index, start, word, shield, opened, certainly, closes_from in zip(
        events.tolist(), starts, words, shields, inner, sure, until, strict=True
    ):
        if light < len(light_at) and light_at[light] < index:
            light = adopt_before(index)
        same = entries.setdefault(word, [])
        if start:
            if same and word in (_A, _NOBR):
                adopt(same, index, word, shield)
            count = int(attribute_count[index])
            entry = [count * count + _CLONE_COST * (count + 1), shield, opened, index, closes_from]
            same.append(entry)
            order.append(entry)
            listed += entry[0]
        elif same:
            # The element the adoption agency closes is one of the listed entries of that name: when
            # something may have opened inside the earliest, it may find a "furthest block" and clone.
            if same[0][1] != shield or same[0][2] != opened:
                total += listed * _ADOPTION_CLONES
            entry = same[-1]
            pop_after(same[0][3], index)
            if certainly and entry[1] == shield and opened - entry[2] < _ADOPTION_CLONES:
                unlist(same.pop(), index)
    adopt_before(size)
    for same in entries.values():
        for entry in same:
            unlist(entry, size)
    return total


def _opened_until(tokens: _Tokens, formatting: Bools, ignored: Bools, certain: Bools) -> tuple[Ints, Ints]:
    """For each formatting start tag, the first later token that may pop the element it opened (see
    `_clone_work`), or the token after it where it may open nothing (it may lie in a tag: then it is no
    entry worth trusting); other tokens get a later bound, unused. And for the end tags of well-nested
    pairs, their start tag (-1 for other tokens)."""
    size = tokens.at.size
    paired = tokens.whole & (tokens.named(_INLINE) | formatting) & certain
    nest_start = tokens.start & paired
    nest_end = tokens.end & paired
    # Well-nested pairs: an end tag at depth d (before it) pairs with the last start tag that reached d,
    # when nothing in between went below d: sorted by depth, then position, the two are neighbours.
    members = np.flatnonzero(nest_start | nest_end)
    step = np.where(nest_start[members], 1, -1)
    after = np.cumsum(step)
    level = np.where(step > 0, after, after + 1)
    by_level = np.argsort(level, kind="stable")  # members are in document order already
    sorted_members, sorted_level = members[by_level], level[by_level]
    partner = np.full(size, -1, dtype=np.int64)  # for end tags: the start tag they pair with
    ends = np.flatnonzero(
        nest_end[sorted_members[1:]] & (sorted_level[1:] == sorted_level[:-1]) & (sorted_level[1:] > 0)
    )
    ends += 1
    left, right = sorted_members[ends - 1], sorted_members[ends]
    ok = _which(tokens.start[left] & (tokens.word[left] == tokens.word[right]))
    partner[right[ok]] = left[ok]
    safe_start = tokens.start & certain & (tokens.named(_INLINE) | tokens.named(_INLINE_VOID) | formatting)
    safe_start &= ~(tokens.named(_NAME_A) | tokens.named(_NAME_NOBR))
    unsafe = (tokens.start | tokens.end) & ~ignored & ~safe_start & (partner < 0)
    # The first unsafe token after each token: a running minimum from the end.
    positions = np.where(unsafe, np.arange(size), size)
    first_unsafe = np.minimum.accumulate(positions[::-1])[::-1]
    result = np.append(first_unsafe[1:], size)
    # A start tag inside a well-nested pair is popped by the pair's end tag: the next end tag at one
    # level below its own, when that pairs with a start tag before it.
    opens = np.flatnonzero(nest_start[members] & formatting[members])  # only entries need it
    enclosing = np.searchsorted(
        sorted_level * (size + 1) + sorted_members, (level[opens] - 1) * (size + 1) + members[opens]
    )
    has = _which(enclosing < sorted_members.size)
    candidate = sorted_members[enclosing[has]]
    inside = (sorted_level[enclosing[has]] == level[opens][has] - 1) & (partner[candidate] >= 0)
    inside &= partner[candidate] < members[opens][has]
    hit = _which(inside)
    at = members[opens][has][hit]
    result[at] = np.minimum(result[at], candidate[hit])
    uncertain_start = _which(tokens.start & ~certain & ~ignored)
    result[uncertain_start] = np.minimum(uncertain_start + 1, size)
    return result, partner


# Attributes. lexbor checks every new attribute of a tag against those it already has (for duplicates),
# so one tag with n distinctly named attributes costs about 2 ns x n**2: 5,000 take 50 ms, 20,000
# (a 128 KB tag) 0.8 s. Repeated names cost nothing extra (the duplicates are dropped), end tags'
# attributes about 30 times less; both are counted like start tags' here, which only overestimates.
# <html> and <body> are one element each however many of their start tags a page has: each later tag's
# attributes are checked against (and added to) the first one's, so those count as one tag's.


@dataclass(frozen=True, slots=True)
class AttributeEstimate:
    """Upper estimates of the attributes of the elements lexbor builds: the most in one, and the sum over
    them of their squares (the duplicate checks lexbor could make, up to a constant), clones of
    formatting elements included (with what a clone costs besides: see `_clone_work`)."""

    most: int
    work: int


def estimate_attributes(data: bytes) -> AttributeEstimate:
    """Bounds the attributes per element lexbor would build from ``data`` (UTF-8 HTML), formatting
    elements' clones included. Linear time; the same as `estimate_nesting`'s ``attributes``, which needs
    the page's tag names and text-only regions anyway (for the clones)."""
    return estimate_nesting(data).attributes


def _estimate_attributes(
    buf: npt.NDArray[np.uint8], special: Ints, specials: _Specials, starts: Ints
) -> tuple[AttributeEstimate, Ints]:
    """The estimate from the "<", ">" and quotes of the page (``special``, `_Specials`) and the indices
    among them of the "<" that start a tag ("<name" or "</name", in the data state or not).

    Every attribute name starts right after a blank or "/" (the tokenizer's separators), or right
    after the quote that closed the previous attribute's value, and that value's opening quote may
    open a value (`_Specials`). So a tag has at most as many attributes as it holds bytes that follow a
    blank or "/" and are none of blank, "/" and ">", plus quotes that may open a value. A tag ends at
    its first ">" outside quoted values; a ">" that is certainly outside one ends whatever tags began
    since the previous such ">". Between two of those, counting from the first "<name" or "</name" on
    bounds the attributes of all the tags in between together (so also their sum of squares), and
    leaves out text between tags, where blanks abound.
    """
    size = buf.size - _LOOKBACK - _NAME_WINDOW - 4
    if starts.size == 0:
        return AttributeEstimate(0, 0), np.zeros(0, dtype=np.int64)
    gt_index = specials.gt_index
    ends = gt_index[_which(~specials.maybe_in_value(gt_index))]
    # Spans: from the first tag start after each certain ">" to the next certain ">" (or the end). A
    # start's span is the number of certain ">" before it: a running count, not a binary search.
    certain = np.zeros(special.size, dtype=bool)
    certain[ends] = True
    start_span = _running_count(certain)[starts]
    first = np.ones(starts.size, dtype=bool)
    first[1:] = start_span[1:] != start_span[:-1]
    first_mask, first = first, _which(first)
    begin, span = starts[first], start_span[first]
    end = np.append(ends, special.size - 1)[span]  # the last special byte counted (a ">", or any at the end)
    begin_at = special[begin]
    # The "/" of an end tag separates no name: start counting after it.
    begin_at += 2 * (buf[begin_at + _LOOKBACK + 1] == _SLASH)
    end_at = np.where(span < ends.size, special[end], size)
    count = _name_starts(buf[_LOOKBACK : _LOOKBACK + size], begin_at, end_at)
    quotes = specials.may_open_through(np.concatenate([begin, end]))
    count += quotes[begin.size :] - quotes[: begin.size]
    most, work = int(count.max()), int(np.square(count).sum())
    per_start = count[_running_count(first_mask) - 1]  # each tag gets its span's count
    # Every <html> (or <body>) start tag after the first adds its attributes to the one element the first
    # made, each checked against those already there: the spans holding such tags count as one element.
    name_at = special[starts] + _LOOKBACK + 1
    # The first 4 bytes of each name, lower-cased (OR 0x20 lower-cases letters, and makes a letter of no
    # other byte), and whether the name ends after them (NUL continues a name: it is read as U+FFFD).
    four = np.ndarray(shape=(buf.size - 3,), dtype="<u4", buffer=buf, strides=(1,))[name_at] | np.uint32(0x20202020)
    four[_which(~_TAG_NAME_END[buf[name_at + 4]])] = 0
    for name in (_HTML, _BODY):
        held = np.unique(np.searchsorted(span, start_span[_which(four == name)]))
        if held.size > 1:  # within one span, the attributes of all its tags together are counted already
            merged = int(count[held].sum())
            most, work = max(most, merged), work + merged * merged
    return AttributeEstimate(most, work), per_start


_TAG_NAME_END = _byte_table(b"\t\n\f\r />")
_HTML, _BODY = (np.uint32(int.from_bytes(name, "little")) for name in (b"html", b"body"))


def _name_starts(raw: npt.NDArray[np.uint8], begin: Ints, end: Ints) -> Ints:
    """For each span [begin, end): the bytes that follow a blank or "/" and are none of blank, "/", ">"."""
    words = _name_start_words(raw)
    before = np.concatenate([[0], np.cumsum(np.bitwise_count(words), dtype=np.int64)])

    def flags_before(offset: Ints) -> Ints:  # flags at indices below ``offset``
        word, bit = offset >> 6, (offset & 63).astype(np.uint64)
        partial = np.bitwise_count(words[word] & ((np.uint64(1) << bit) - np.uint64(1)))
        result: Ints = before[word] + partial
        return result

    # Names start at begin + 1 .. end - 1, that is flags begin .. end - 2.
    return flags_before(np.maximum(end - 1, begin)) - flags_before(begin)


_BLOCK = 1 << 16  # bytes per block of `_name_start_words` (a multiple of 64)


def _name_start_words(raw: npt.NDArray[np.uint8]) -> Words:
    """Bit i of the words (64 per word, little-endian): a name may start at raw[i + 1].

    Sound with cheaper tests: any byte up to 0x20 counts as a blank before a name, and only the space
    is taken for a blank starting none (a NUL or control byte can start a name). Packed bits make
    counting flags up to any offset a popcount, not a running sum over bytes. The page is read in
    blocks, reusing small arrays in place: page-sized temporaries cost more in page faults (about
    0.2 ms per megabyte each) than all the comparisons."""
    words = np.zeros(raw.size // 64 + 2, dtype="<u8")
    bits = words.view(np.uint8)
    for start in range(0, raw.size - 1, _BLOCK):
        block = raw[start : min(start + _BLOCK, raw.size - 1) + 1]
        other = block == _SLASH
        separator = block <= 0x20
        separator |= other
        no_name = block == 0x20
        no_name |= other
        no_name |= np.equal(block, _GT, out=other)
        flags = separator[:-1]
        flags &= np.invert(no_name, out=no_name)[1:]
        packed = np.packbits(flags, bitorder="little")
        bits[start // 8 : start // 8 + packed.size] = packed
    return words
