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

Start tags count unless certainly inside a comment or raw text, with three exceptions, each sound:
void elements (outside SVG/MathML, where ``<link>`` or ``<source>`` do nest); self-closing tags where
the content is certainly SVG/MathML; and elements the tree builder closes by itself when another of
their kind starts (``<li>``, ``<p>``, ``<td>``, ``<option>``...). One of those can only nest inside
another behind an element that is counted (a ``<ul>``, a ``<button>``), so leaving them out at most
halves the depth; tables and selects count for the levels their parts add. `NestingEstimate.work`
is therefore a bound up to a small constant factor (tests check real depth <= 3 x estimate + 8):
good enough to refuse pages that would take seconds, not to predict milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["NestingEstimate", "estimate_nesting"]

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]

_NAME_WINDOW = 32  # tag names longer than this never match an end tag (counted, never closed)
_SHORT_WINDOW = 16  # most names end within this; only the others are read further
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
    """A set of tag names (at most 8 bytes each), tested against names read as 8-byte words."""

    def __init__(self, *names: str) -> None:
        self._words = np.array(sorted(_name_word(name) for name in names), dtype=np.uint64)

    def contains(self, word: Words) -> Bools:
        index = np.minimum(np.searchsorted(self._words, word), self._words.size - 1)
        result: Bools = self._words[index] == word
        return result


def _name_word(name: str) -> int:
    raw = name.encode()
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

    def named(self, names: _NameSet) -> Bools:
        return self.whole & (self.longer == 0) & names.contains(self.word)

    def named_prefix(self, names: _NameSet) -> Bools:
        """Names whose first 8 bytes are in ``names`` (longer names included: a superset)."""
        return self.whole & names.contains(self.word)

    def same_name(self, index: int) -> Bools:
        return self.whole & (self.word == self.word[index]) & (self.longer == self.longer[index])


def estimate_nesting(data: bytes) -> NestingEstimate:
    """Estimates the nesting depth lexbor would reach on ``data`` (UTF-8 HTML). Linear time."""
    raw = np.frombuffer(data, dtype=np.uint8)
    # Padding lets windows read past either end without bounds checks; zero bytes end names.
    buf = np.concatenate([np.zeros(_LOOKBACK, np.uint8), raw, np.zeros(_NAME_WINDOW + 4, np.uint8)])
    special = np.flatnonzero((raw == _LT) | (raw == _GT) | (raw == _DQ) | (raw == _SQ))
    kind = raw[special]
    tokens = _tokenize(buf, special[kind == _LT])
    at = tokens.at
    if at.size == 0:
        return NestingEstimate(_IMPLIED_DEPTH, 0)
    gts = special[kind == _GT]
    in_tag = _inside_tag(at, gts, _Quotes(buf, special[kind == _DQ], special[kind == _SQ]))
    foreign_from = _first(at[tokens.start & tokens.named(_FOREIGN)], default=raw.size)
    # In a <select> or a <frameset> the tree builder ignores <style>, <title>... so their content is
    # markup after all; from the first of those on, raw text is only possibly text.
    raw_text_from = _first(at[tokens.start & tokens.named(_IGNORES_RAW_TEXT)], default=raw.size)
    ignored, uncertain = _regions(data, tokens, gts, in_tag, min(foreign_from, raw_text_from))

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
    for names, levels in _WEIGHTS.items():
        weight[tokens.named(names)] = levels
    delta = _matched(tokens, nests, certain_end, weight)
    depth = int(np.cumsum(delta).max(initial=0))
    return NestingEstimate(depth + _IMPLIED_DEPTH, int(at.size))


def _certainly_foreign(data: bytes, buf: npt.NDArray[np.uint8], tokens: _Tokens, gts: Ints, unsure: Bools) -> Bools:
    """Tokens certainly inside SVG or MathML content: after a real <svg> or <math> start tag, with
    nothing since that could have left it (any end tag, a tag that breaks out of foreign content, an
    integration point such as <foreignObject> whose content is HTML)."""
    at = tokens.at
    entries = np.flatnonzero(tokens.start & tokens.named(_FOREIGN) & ~unsure)
    if entries.size == 0:
        return np.zeros(at.size, dtype=bool)
    entries = entries[~_self_closing(data, buf, at[entries], gts)]  # "<svg/>" opens nothing
    exits = np.flatnonzero(tokens.end | (tokens.start & tokens.named_prefix(_LEAVES_FOREIGN)) | ~tokens.whole)
    index = np.arange(at.size)
    last_entry, last_exit = _last_before(entries, index), _last_before(exits, index)
    return (last_entry >= 0) & (last_entry > last_exit) & ~unsure


def _last_before(sorted_values: Ints, queries: Ints) -> Ints:
    """For each query, the largest value below it, or -1."""
    index = np.searchsorted(sorted_values, queries) - 1
    result = np.full(queries.size, -1, dtype=np.int64)
    found = index >= 0
    result[found] = sorted_values[index[found]]
    return result


def _tokenize(buf: npt.NDArray[np.uint8], at: Ints) -> _Tokens:
    c1 = buf[at + _LOOKBACK + 1]
    c2 = buf[at + _LOOKBACK + 2]
    start = _LETTER[c1]
    end = (c1 == _SLASH) & _LETTER[c2]
    opener = (c1 == _BANG) | (c1 == _QUESTION) | ((c1 == _SLASH) & ~_LETTER[c2] & (c2 != _GT))
    keep = start | end | opener
    at, start, end, opener, c1, c2 = at[keep], start[keep], end[keep], opener[keep], c1[keep], c2[keep]
    comment = (c1 == _BANG) & (c2 == _DASH) & (buf[at + _LOOKBACK + 3] == _DASH)
    name_at = at + _LOOKBACK + 1 + end
    words, whole = _read_names(buf, name_at, _SHORT_WINDOW)
    whole &= start | end
    plaintext = whole & (words[:, 0] == _PLAINTEXT[0]) & (words[:, 1] == _PLAINTEXT[1])
    # Names past 8 bytes get an exact id of their own (equal names, equal ids); most names are short.
    longer = np.zeros(at.size, dtype=np.int64)
    spill = np.flatnonzero(~whole & (start | end))
    past = np.flatnonzero((words[:, 1] != 0) | ~whole)
    if past.size:
        rows = np.zeros((past.size, _NAME_WINDOW // 8), dtype=np.uint64)
        rows[:, :2] = words[past]
        if spill.size:
            long_words, whole[spill] = _read_names(buf, name_at[spill], _NAME_WINDOW)
            rows[np.searchsorted(past, spill)] = long_words
        order = np.lexsort(rows.T[::-1])
        changed = np.ones(past.size, dtype=bool)
        changed[1:] = (rows[order][1:] != rows[order][:-1]).any(axis=1)
        longer[past[order]] = np.cumsum(changed)
    return _Tokens(at, start, end, opener, comment, words[:, 0].copy(), longer, whole, plaintext)


def _read_names(buf: npt.NDArray[np.uint8], name_at: Ints, width: int) -> tuple[Words, Bools]:
    """Names at ``name_at``, lower-cased, cut at the first byte that ends a tag name, as 8-byte words;
    and whether the name ended within ``width`` bytes. (Arithmetic rather than lookup tables: this
    runs over every tag of the page.)"""
    window = sliding_window_view(buf, width)[name_at]
    upper = ((window >= 0x41) & (window <= 0x5A)).view(np.uint8)
    window = np.bitwise_or(window, upper * np.uint8(0x20))
    stops = (window == 0x2F) | (window == 0x3E) | (window == 0x20) | (window == 0)
    stops |= (window >= 0x09) & (window <= 0x0D) & (window != 0x0B)  # tab, LF, FF, CR
    length = stops.argmax(axis=1)
    whole: Bools = stops[np.arange(name_at.size), length]
    length[~whole] = width
    window *= (np.arange(width) < length[:, None]).view(np.uint8)
    words: Words = np.ascontiguousarray(window).view(np.dtype("<u8"))
    return words, whole


def _first(positions: Ints, default: int) -> int:
    return int(positions[0]) if positions.size else default


class _Quotes:
    """Tells whether positions may lie inside a quoted attribute value (an over-approximation)."""

    def __init__(self, buf: npt.NDArray[np.uint8], double: Ints, single: Ints) -> None:
        self._tables = [(quotes, self._may_open(buf, quotes)) for quotes in (double, single)]

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

    def maybe_inside(self, positions: Ints) -> Bools:
        """True where the nearest quote before the position (of either kind) may open a value: the
        position may then be inside that value, as no quote of its kind closed it yet."""
        result = np.zeros(positions.size, dtype=bool)
        for quotes, opens in self._tables:
            index = np.searchsorted(quotes, positions) - 1
            has = index >= 0
            result[has] |= opens[index[has]]
        return result


def _inside_tag(at: Ints, gts: Ints, quotes: _Quotes) -> Bools:
    """Tokens that may lie inside the attributes of an earlier tag (see the module docstring)."""
    result = quotes.maybe_inside(at)
    previous = np.concatenate([[-1], at[:-1]])
    next_gt = np.searchsorted(gts, previous, side="right")  # the first ">" after the previous token
    no_gt = next_gt >= gts.size
    no_gt[~no_gt] = gts[next_gt[~no_gt]] > at[~no_gt]
    result |= no_gt & (previous >= 0)
    last_gt = np.searchsorted(gts, at) - 1  # the last ">" before each token
    has = last_gt >= 0
    result[has] |= quotes.maybe_inside(gts[last_gt[has]])
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
    comment_at = at[tokens.comment]
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
                    closers[name] = at[tokens.end & tokens.same_name(index)]
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
    ignored = _covered(at, starts[certain], ends[certain])
    uncertain = _covered(at, starts[~certain], ends[~certain])
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
    has = index >= 0
    covered[has] = reach[index[has]] > at[has]
    return covered


def _matched(tokens: _Tokens, opens: Bools, closes: Bools, weight: Ints) -> Ints:
    """+weight per counted start tag, -weight per end tag closing an element of its name that is
    counted open."""
    delta = np.zeros(tokens.at.size, dtype=np.int64)
    delta[opens] = weight[opens]
    involved = np.flatnonzero(opens | (closes & tokens.whole))
    if involved.size == 0:
        return delta
    # Names too long to read whole never match: each gets a key of its own.
    word = tokens.word[involved]
    longer = np.where(tokens.whole[involved], tokens.longer[involved], -1 - np.arange(involved.size))
    order = np.lexsort((np.arange(involved.size), longer, word))
    step = np.where(opens[involved], 1, -1).astype(np.int64)[order]
    word, longer = word[order], longer[order]
    first = np.ones(involved.size, dtype=bool)
    first[1:] = (word[1:] != word[:-1]) | (longer[1:] != longer[:-1])
    segment = np.cumsum(first) - 1
    total = np.cumsum(step)
    local = total - (total - step)[first][segment]
    # Running minimum within each segment: shifting later segments far down keeps earlier ones out.
    big = 2 * (step.size + 2)
    low_water = np.minimum.accumulate(local - segment * big) + segment * big
    count = local - np.minimum(low_water, 0)  # elements of this name open, never below zero
    before = np.concatenate([[0], count[:-1]])
    before[first] = 0
    closed = involved[order[(step == -1) & (count < before)]]
    delta[closed] = -weight[closed]
    return delta
