"""Formatting-element clone bombs (issues #4/#9): attributes multiplied by the tree builder itself.

A formatting element (<b>, <a>, <font>...) closed implicitly, by "</p>" say, stays in lexbor's list of
active formatting elements, and every later text or start tag clones it back into the tree with all its
attributes. One <b> with 4,000 attributes before 10,000 "</p><p>y" (100 KB) takes lexbor 15 s. The
pre-parse estimate (`proxy.nesting`) follows that list and must stay an upper bound of the attributes
lexbor's tree holds, clones included (the hypothesis properties of test_attribute_bomb.py check it on
random markup with formatting tags; here: named shapes, refusals, and pages that must pass).
"""

from __future__ import annotations

import time

import pytest

from proxy.nesting import estimate_attributes, estimate_nesting
from proxy.rewrite import Page, RewriteError
from tests.adversarial.test_attribute_bomb import (
    LIMIT,
    URL,
    assert_refused_by_the_pre_pass,
    assert_upper_bound,
    max_attributes,
)


def attributes(count: int) -> str:
    return " ".join(f"a{i}=1" for i in range(count))


REPEATS = "</p><p>y" * 2_000  # each "y" clones every listed formatting element that is no longer open

# name -> page whose clones take lexbor well over 50 ms (measured 0.17 s to 15 s of CPU).
CLONE_BOMBS: dict[str, bytes] = {
    "one element, many attributes": f"<p><b {attributes(4_000)}>x{'</p><p>y' * 10_000}".encode(),  # 15 s
    # Distinct entries (equal ones are capped at three), one attribute each: 0.17 s in 11 KB.
    "many distinct elements": ("<p>" + "".join(f"<b a{i}=1>" for i in range(500)) + "</p><p>x" * 800).encode(),
    # </b> cannot close a <b> behind a table (out of scope) or from inside a select (ignored): it stays listed.
    "end tag behind a table": f"<p><b {attributes(2_000)}><table></b></table>{REPEATS}".encode(),  # 1.3 s
    "end tag inside a select": f"<p><b {attributes(2_000)}><select></b></select>{REPEATS}".encode(),  # 0.6 s
    # A marker (<object>) hides the first <a> from the second, which therefore does not remove it.
    "a behind a marker": f"<p><a {attributes(2_000)}><object><a x></object>{REPEATS}".encode(),  # 0.6 s
    "font and nobr": f"<p><font {attributes(1_000)}><nobr {attributes(1_000)}>{REPEATS}".encode(),
}


@pytest.mark.parametrize("name", sorted(CLONE_BOMBS))
def test_clone_bombs_are_refused_before_parsing(name: str) -> None:
    assert_refused_by_the_pre_pass(CLONE_BOMBS[name], name, within_s=0.3, clock=time.process_time)


def test_the_clone_bomb_from_the_issue_counts_every_clone() -> None:
    # The estimate bounds what the tree holds: 10,000 clones of 4,000 attributes, besides the original.
    html = CLONE_BOMBS["one element, many attributes"]
    estimate = estimate_attributes(html)
    assert estimate.most == 4_000
    assert estimate.work >= 10_001 * 4_000**2


@pytest.mark.parametrize(
    "html",
    [
        b"<p ><b <script><xmp>",  # found by hypothesis: the <b> is cloned into the <xmp>'s <p>
        b"<p><b a b c d>x</p><p>y</p><p>y</p><p>y</p><p>y",
        b"<p><b a b c d><i e f g>x</p>x<p>y</p><p>y</p>y<p>y</p><p>y",
        b"<p><a a b c>x<div>y</div>z</a>w<p>v",  # the adoption agency clones <a> into the <div>
        b"<b a b><i c d><div>x</b>y</i>z<p>w",
        b"<p><a a b><a c d>x</a>y</p>z<p>w",
        b"<p><b a b><table><td>x</td></b></table>y</p>z",
        b"<p><b a b c><select></b></select>y</p>z<p>w",
        b"<b a b><span><sup>x</span></sup>y</b><p>z",  # misnested phrasing end tags pop the <b>
        b"<sup><b a b c><span>x</sup></span>y<p>z",
        b"<p><nobr a b><nobr c d>x</p>y<nobr e>z",
        b"<p><b a b c>x</p></br></br>y</br>",  # "</br>" is read as "<br>": it reconstructs
        b"<p><b a b>" + b"<div>" * 9 + b"</b>x" + b"</div>" * 9 + b"y<p>z",
    ],
)
def test_clone_shapes_are_bounded(html: bytes) -> None:
    assert max_attributes(html)[1] > 0
    assert_upper_bound(html)


def test_well_nested_formatting_costs_no_clones() -> None:
    # 1.3 MB of links and emphasis, all closed where they opened: nothing is ever cloned, and the
    # estimate stays what the tags themselves hold.
    paragraph = '<p><a href="/wiki/X" title="X" class="l"><i>t</i></a> <b>u<span>v</span><sup>w</sup></b> x</p>'
    html = (paragraph * 15_000).encode()
    estimate = estimate_nesting(html).attributes
    assert estimate.work <= 64 * 15_000 < LIMIT / 20, estimate  # 8 attributes estimated in the first <a>
    assert max_attributes(html)[1] <= estimate.work
    Page(html, URL).images()  # not refused


def test_unclosed_formatting_on_a_page_of_moderate_size_passes() -> None:
    # A forgotten </b> (here once per 1,000 paragraphs) is cloned into each later paragraph: 15,000
    # clones in all, 12 ms of parsing. Each clone counts 64 units per attribute and per element (about
    # what it costs lexbor), each paragraph two possible clones: the page passes by a margin.
    html = ("<p><b class=c>bold" + "</p><p>text" * 1_000).encode() * 5
    assert 2 * 15_000 * (1 + 64 * 2) < estimate_attributes(html).work < LIMIT / 5
    Page(html, URL).images()


def test_a_small_clone_bomb_is_refused_too() -> None:
    # 7.8 KB: below the size at which the attribute check used to start (10 KB), but 200 clones of a tag
    # with 900 attributes. The check now starts where a cubic bound (clones x attributes^2) could pass
    # the limit, a few hundred bytes.
    html = ("<p><b " + " ".join(f"a{i}=1" for i in range(900)) + ">x" + "</p><p>y" * 200).encode()
    assert len(html) < 10_000
    with pytest.raises(RewriteError) as refused:
        Page(html, URL)
    assert refused.value.code == "page_too_complex"
