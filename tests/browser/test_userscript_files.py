"""The shipped browser files agree with each other: the userscript and the site snippet carry the same core,
the CSS file is the core's CSS, and the userscript's metadata is what userscript managers need."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USERSCRIPT = ROOT / "userscript" / "invertornot.user.js"
SNIPPET = ROOT / "userscript" / "invertornot.js"
CSS_FILE = ROOT / "userscript" / "invertornot.css"
CORE = re.compile(
    r"^  // ---- invertornot core: begin.*?^  // ---- invertornot core: end ----$", re.MULTILINE | re.DOTALL
)


def core_of(path: Path) -> str:
    found = CORE.findall(path.read_text())
    assert len(found) == 1, f"{path.name}: expected one core region between the begin/end markers"
    return str(found[0])


def metadata() -> dict[str, list[str]]:
    text = USERSCRIPT.read_text()
    block = re.search(r"^// ==UserScript==\n(.*?)^// ==/UserScript==$", text, re.MULTILINE | re.DOTALL)
    assert block is not None and text.startswith("// ==UserScript==")
    keys: dict[str, list[str]] = {}
    for line in block.group(1).splitlines():
        match = re.fullmatch(r"// @(\S+)(?:\s+(.*))?", line)
        assert match, f"not a metadata line: {line!r}"
        keys.setdefault(match.group(1), []).append((match.group(2) or "").strip())
    return keys


def normalised_css(text: str) -> str:
    without_comments = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"\s+", " ", without_comments).strip()


def test_userscript_and_snippet_share_the_same_core() -> None:
    core = core_of(USERSCRIPT)
    assert core == core_of(SNIPPET), "copy the core region of invertornot.user.js into invertornot.js"
    assert not re.search(r"\bGM[._]", core)  # the core is host-neutral: GM APIs belong to the userscript
    assert "GM." not in SNIPPET.read_text()


def test_css_file_holds_the_rules_the_scripts_inject() -> None:
    found = re.search(r"const CSS = \[\n(.*?)\]\.join\('\\n'\);", core_of(USERSCRIPT), re.DOTALL)
    assert found is not None
    injected = "\n".join(re.findall(r"^\s*'(.*)',$", found.group(1), re.MULTILINE))
    assert "grayscale(50%) invert(100%) brightness(95%) hue-rotate(180deg)" in injected
    assert normalised_css(injected) == normalised_css(CSS_FILE.read_text())


def test_metadata_block_suits_tampermonkey_violentmonkey_and_greasemonkey() -> None:
    keys = metadata()
    for single in ("name", "namespace", "version", "description", "run-at", "downloadURL", "updateURL"):
        assert len(keys.get(single, [])) == 1, single
    assert keys["run-at"] == ["document-end"]
    assert "*://*.wikipedia.org/*" in keys["match"]
    # Greasemonkey 4 has only GM.*, older managers only GM_*: both are granted, and used with a fallback.
    assert {
        "GM.xmlHttpRequest",
        "GM_xmlhttpRequest",
        "GM.getValue",
        "GM_getValue",
        "GM.setValue",
        "GM_setValue",
        "GM.registerMenuCommand",
        "GM_registerMenuCommand",
    } <= set(keys["grant"])
    assert {"127.0.0.1", "*"} <= set(keys["connect"])
    assert keys["downloadURL"] == keys["updateURL"] == ["http://127.0.0.1:8080/userscript/invertornot.user.js"]
    version = keys["version"][0]
    assert f"const VERSION = '{version}';" in core_of(USERSCRIPT)
    assert f"site snippet v{version} " in SNIPPET.read_text()


@pytest.mark.parametrize("path", [USERSCRIPT, SNIPPET], ids=lambda path: path.name)
def test_scripts_stay_strict_and_self_contained(path: Path) -> None:
    text = path.read_text()
    assert "'use strict';" in text
    assert not re.search(r"^\s*(import|export)\s", text, re.MULTILINE)  # one classic script, no modules
    assert "eval(" not in text and "innerHTML" not in text
