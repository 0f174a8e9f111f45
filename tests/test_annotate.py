"""`invertornot annotate` on a generated static site of real dataset images, with the real default model:
labels and their cache, resuming, writing classes through the page rewriter, --check, remote images."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from classifier.model import InvertModel
from proxy.annotate import LABELS_FILE, AnnotateOptions, Annotator, LabelsFile, ProgressBar
from proxy.rewrite import Page
from proxy.site_scan import SITE_OPTIONS, markdown_images
from tests.conftest import DATASET_IMAGES, DATASET_LABELS, run_cli
from tests.proxy.service_support import running_upstream

N_IMAGES = 100
PER_PAGE = 10


@dataclass
class Site:
    root: Path
    images: list[str]  # site-relative paths of the distinct images the pages show without markup
    labels: dict[str, int]  # those paths -> the dataset's label
    manual: dict[str, str]  # site path -> the class its <img> carries


def _dataset_rows() -> list[dict[str, str]]:
    with DATASET_LABELS.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] in ("0", "1") and row["ambiguous"] == "0"]
    # Every 15th image: a spread over packages and kinds, the same on every run.
    return rows[::15][: N_IMAGES + 2]


def build_site(root: Path) -> Site:
    """HTML pages in the shapes real sites use (relative, root-relative, srcset, <picture>, lazy placeholder),
    Markdown pages (inline, reference, raw <img>, code blocks that must be skipped), manual markup, one
    image under two paths and one reference to a file that does not exist."""
    rows = _dataset_rows()
    images: list[str] = []
    labels: dict[str, int] = {}
    for n, row in enumerate(rows[:N_IMAGES]):
        path = f"img/{'diagrams' if n % 2 else 'photos'}/{n:03d}-{row['file']}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATASET_IMAGES / row["file"], root / path)
        images.append(path)
        labels[path] = int(row["label"])
    manual_rows = rows[N_IMAGES:]
    manual = {}
    for row, css_class in zip(manual_rows, ("invert-not", "skin-invert"), strict=True):
        path = f"img/manual-{row['file']}"
        shutil.copy(DATASET_IMAGES / row["file"], root / path)
        manual[path] = css_class
    html_images = images[: N_IMAGES // 2]
    markdown_images_ = images[N_IMAGES // 2 :]
    for page_number, start in enumerate(range(0, len(html_images), PER_PAGE)):
        chunk = html_images[start : start + PER_PAGE]
        nested = page_number % 2 == 1  # pages in a sub-folder refer to images with ../
        prefix = "../" if nested else ""
        tags = []
        for n, path in enumerate(chunk):
            shape = n % 5
            if shape == 0:
                tags.append(f'<p><img src="{prefix}{path}" alt="figure {n}"></p>')
            elif shape == 1:
                tags.append(f'<img src="/{path}" width="300">')
            elif shape == 2:
                tags.append(f'<img src="{prefix}{path}" srcset="{prefix}{path} 1x, {prefix}{path} 2x">')
            elif shape == 3:
                tags.append(f'<picture><source srcset="{prefix}{path}"><img src="{prefix}{path}"></picture>')
            else:
                tags.append(f'<img class="lazy" data-src="{prefix}{path}" src="data:image/gif;base64,R0lGOD">')
        if page_number == 0:
            tags += [f'<img class="{css}" src="{path}">' for path, css in manual.items()]
            tags.append('<img src="img/does-not-exist.png">')
            # The same picture under another path: classified once, labelled twice.
            shutil.copy(root / chunk[0], root / "img/copy-of-first.png")
            tags.append('<img src="img/copy-of-first.png">')
        body = "\n".join(tags)
        page = root / ("posts" if nested else "") / f"page{page_number}.html"
        page.parent.mkdir(exist_ok=True)
        page.write_text(
            f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Page {page_number}</title></head>\n'
            f"<body>\n<h1>Page {page_number} – ünïcode</h1>\n{body}\n"
            "<script>if (1 < 2) {}</script>\n</body>\n</html>\n",
            encoding="utf-8",
        )
    images.append("img/copy-of-first.png")
    labels["img/copy-of-first.png"] = labels[images[0]]
    docs = root / "docs"
    docs.mkdir()
    for page_number, start in enumerate(range(0, len(markdown_images_), PER_PAGE)):
        chunk = markdown_images_[start : start + PER_PAGE]
        lines = [f"# Notes {page_number}", "", "```", "![not an image](img/in-a-code-block.png)", "```", ""]
        for n, path in enumerate(chunk):
            if n % 3 == 0:
                lines.append(f'Inline ![figure {n}](../{path} "a title") in a sentence.')
            elif n % 3 == 1:
                lines += [f"![figure {n}][fig{n}]", "", f"[fig{n}]: /{path}"]
            else:
                lines.append(f'<img src="../{path}" alt="raw html">')
        lines.append("And `![code span](img/nope.png)` is code.")
        (docs / f"notes{page_number}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Site(root, images, labels, manual)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return build_site(tmp_path / "site")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_labels_every_image_once_and_a_second_run_only_hashes(site: Site, default_model: InvertModel) -> None:
    summary = Annotator(site.root, model=default_model).run()
    assert (summary.html_pages, summary.markdown_pages) == (5, 5)
    assert summary.images == len(site.images) + len(site.manual)
    assert summary.manual == len(site.manual)
    assert summary.classified == N_IMAGES, "the copy shares its original's classification"
    assert summary.reused == 0 and not summary.errors
    assert summary.invert + summary.invert_not == len(site.images)
    assert list(summary.missing) == ["img/does-not-exist.png"]

    document = json.loads((site.root / LABELS_FILE).read_text())
    entries = document["images"]
    assert document["format"] == 1 and sorted(entries) == sorted(site.images)
    assert entries["img/copy-of-first.png"] == entries[site.images[0]]
    for path in site.images[:5]:
        verdict = default_model.classify_bytes([(site.root / path).read_bytes()])[0]
        assert entries[path] == {
            "invert": verdict.invert,  # type: ignore[union-attr]
            "p_invert": verdict.p_invert,  # type: ignore[union-attr]
            "sha256": sha256(site.root / path),
            "model": default_model.version,
        }
    right = sum(entries[path]["invert"] == bool(site.labels[path]) for path in site.images)
    assert right / len(site.images) > 0.8, "the real model labels real images sensibly"

    again = Annotator(site.root, model=default_model).run()
    assert (again.classified, again.reused) == (0, len(site.images))
    assert json.loads((site.root / LABELS_FILE).read_text()) == document

    # One image changes: only it is classified again.
    shutil.copy(site.root / site.images[1], site.root / site.images[2])
    changed = Annotator(site.root, model=default_model).run()
    assert (changed.classified, changed.reused) == (0, len(site.images)), "its new contents are known already"
    entries = json.loads((site.root / LABELS_FILE).read_text())["images"]
    assert entries[site.images[2]] == entries[site.images[1]]
    (site.root / site.images[3]).write_bytes((site.root / site.images[3]).read_bytes() + b"edited")
    assert Annotator(site.root, model=default_model).run().classified == 1


class Interrupting:
    """A progress bar that stops the run (as Ctrl-C would) after the first classified batch."""

    def __init__(self, total: int, description: str) -> None:
        self.description = description

    def update(self, n: int = 1) -> None:
        if self.description == "classifying":
            raise KeyboardInterrupt

    def close(self) -> None: ...


def interrupting(total: int, description: str) -> ProgressBar:
    return Interrupting(total, description)


def test_an_interrupted_run_resumes_where_it_stopped(site: Site, default_model: InvertModel) -> None:
    options = AnnotateOptions(batch_size=16, workers=2)
    with pytest.raises(KeyboardInterrupt):
        Annotator(site.root, options, model=default_model, progress=interrupting).run()
    saved = LabelsFile.load(site.root / LABELS_FILE).entries
    assert 16 <= len(saved) <= 17, "the first batch was saved (plus the copy of an image in it)"
    assert not list(site.root.glob(".invertornot-labels-*")), "no temporary file left behind"
    resumed = Annotator(site.root, options, model=default_model).run()
    assert resumed.classified == N_IMAGES - 16
    assert len(LabelsFile.load(site.root / LABELS_FILE).entries) == len(site.images)


def test_write_marks_the_pages_through_the_rewriter_and_check_guards_ci(site: Site, default_model: InvertModel) -> None:
    unlabelled = Annotator(site.root, AnnotateOptions(check=True), model=default_model).run().unlabelled
    assert unlabelled == sorted(site.images), "nothing is labelled yet"
    summary = Annotator(site.root, AnnotateOptions(write=True), model=default_model).run()
    assert summary.pages_written == 5
    entries = LabelsFile.load(site.root / LABELS_FILE).entries
    page = (site.root / "page0.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "ünïcode" in page and "<script>if (1 < 2) {}</script>" in page
    parsed = Page(page, "http://site.invalid/page0.html", SITE_OPTIONS)
    for ref in parsed.images():
        key = ref.url.removeprefix("http://site.invalid/")
        if key == "img/does-not-exist.png":
            assert '<img src="img/does-not-exist.png">' in page
        elif key in site.manual:
            assert ref.markup == site.manual[key]
            assert f'<img class="{site.manual[key]}" src="{key}">' in page, "manual markup is left alone"
        else:
            expected = "invert" if entries[key].invert else "invert-not"
            assert ref.manual is None and f'data-invertornot="{expected}"' in page
    lazy = next(line for line in page.splitlines() if 'class="lazy' in line)
    assert "data-src=" in lazy and "data:image/gif" in lazy, "the site's own lazy loading keeps working"
    nested = (site.root / "posts/page1.html").read_text(encoding="utf-8")
    assert nested.count("data-invertornot=") == PER_PAGE and 'src="../img/' in nested, "URLs stay as written"

    again = Annotator(site.root, AnnotateOptions(write=True), model=default_model).run()
    assert again.pages_written == 0, "marking is idempotent"

    assert run_cli("annotate", str(site.root), "--check").returncode == 0
    new_image = site.root / "img/new.png"
    new_image.write_bytes((site.root / site.images[0]).read_bytes() + b"new")
    (site.root / "docs/new.md").write_text("![new](../img/new.png)\n", encoding="utf-8")
    failed = run_cli("annotate", str(site.root), "--check", check=False)
    assert failed.returncode == 1 and "no label: img/new.png" in failed.stderr
    assert "WITHOUT A CURRENT LABEL" in failed.stdout


@pytest.mark.asyncio
async def test_remote_images_are_fetched_only_when_asked(tmp_path: Path, default_model: InvertModel) -> None:
    site = tmp_path / "site"
    site.mkdir()
    async with running_upstream() as upstream:
        remote = upstream.url("/img/cec0396ca436c1bf.png")
        (site / "index.html").write_text(f'<p><img src="{remote}"><img src="{upstream.url("/broken.png")}">')
        skipped = await asyncio.to_thread(Annotator(site, model=default_model).run)
        assert (skipped.remote_skipped, skipped.classified) == (2, 0) and upstream.hits[remote] == 0
        options = AnnotateOptions(fetch=True, allow_private_networks=True, write=True)
        fetched = await asyncio.to_thread(Annotator(site, options, model=default_model).run)
    assert fetched.classified == 1 and fetched.fetch_failed == {upstream.url("/broken.png"): "upstream_error"}
    label = LabelsFile.load(site / LABELS_FILE).entries[remote]
    assert label.sha256 == hashlib.sha256((DATASET_IMAGES / "cec0396ca436c1bf.png").read_bytes()).hexdigest()
    assert 'data-invertornot="invert"' in (site / "index.html").read_text()


def test_markdown_images_skip_code_and_resolve_references() -> None:
    text = "\n".join(
        [
            "![a](one.png) ![b](<two words.png> 'title') ![c][ref] ![Ref]",
            "```python",
            "![no](fenced.png)",
            "```",
            "`![no](span.png)` and ~~~ is not a fence",
            '<p><img src="raw.png" class="invert-not"></p>',
            "[ref]: https://cdn.example.org/three.png",
            "![data](data:image/png;base64,AAAA)",
        ]
    )
    found = markdown_images(text, "http://site.invalid/docs/page.md")
    assert found == [
        ("http://site.invalid/docs/one.png", None),
        ("http://site.invalid/docs/two%20words.png", None),
        ("https://cdn.example.org/three.png", None),
        ("https://cdn.example.org/three.png", None),
        ("http://site.invalid/docs/raw.png", False),
    ]
