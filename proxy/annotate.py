"""`invertornot annotate SITE_DIR`: build-time labels for a static site.

1. Find every image the site's HTML and Markdown pages show (`proxy.site_scan`).
2. Hash each local image (remote ones are fetched with `--fetch`, through the server's `SafeFetcher`).
3. Classify the images the labels file does not know under the same hash and model: decoding runs in a
   pool of threads while the model classifies the previous batch.
4. Keep `invertornot-labels.json` (site path or remote URL -> invert, p_invert, sha256, model). It is the
   cache: it is rewritten atomically after every batch, so an interrupted run resumes where it stopped, and
   a second run only hashes.
5. `--write` marks the images in the HTML pages with `invert` / `invert-not`, through the page proxy's own
   rewriter, which leaves images with manual markup alone; `--check` classifies nothing and fails when an
   image has no label for its current contents (for a site's CI).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from classifier.decode import DEFAULT_MAX_PIXELS, ImageError, decode_image
from proxy.rewrite import Mark, Page, RewriteError
from proxy.site_scan import DEFAULT_SITE_URL, SITE_OPTIONS, SiteImage, SiteMap, SiteScan, scan_site

if TYPE_CHECKING:
    from classifier.model import InvertModel

LABELS_FILE = "invertornot-labels.json"
LABELS_FORMAT = 1
#: Remote images fetched at once (like a browser loading a page).
FETCH_CONCURRENCY = 8


class AnnotateError(RuntimeError):
    """A site that cannot be annotated (no such folder, an unreadable labels file); `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


ProgressFactory = Callable[[int, str], ProgressBar]


class _NoProgress:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def no_progress(total: int, description: str) -> ProgressBar:
    return _NoProgress()


# -- the labels file ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageLabel:
    """What the model said about one image's contents (or why it could not judge them)."""

    sha256: str
    model: str
    invert: bool | None = None
    p_invert: float | None = None
    error: str | None = None  # an ImageError code: the image cannot be judged

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "sha256": self.sha256, "model": self.model}
        return {"invert": self.invert, "p_invert": self.p_invert, "sha256": self.sha256, "model": self.model}

    @classmethod
    def from_json(cls, raw: Any) -> ImageLabel | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("sha256"), str) or not isinstance(raw.get("model"), str):
            return None
        if isinstance(raw.get("error"), str):
            return cls(raw["sha256"], raw["model"], error=raw["error"])
        if isinstance(raw.get("invert"), bool) and isinstance(raw.get("p_invert"), int | float):
            return cls(raw["sha256"], raw["model"], raw["invert"], float(raw["p_invert"]))
        return None

    @property
    def labelled(self) -> bool:
        return self.invert is not None


class LabelsFile:
    """`invertornot-labels.json`: image key -> `ImageLabel`, written atomically (never half a file)."""

    def __init__(self, path: Path, entries: dict[str, ImageLabel] | None = None) -> None:
        self.path = path
        self.entries: dict[str, ImageLabel] = entries or {}

    @classmethod
    def load(cls, path: Path) -> LabelsFile:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as error:
            raise AnnotateError("labels_file_invalid", f"{path}: cannot read the labels file: {error}") from None
        if not isinstance(raw, dict) or raw.get("format") != LABELS_FORMAT or not isinstance(raw.get("images"), dict):
            raise AnnotateError("labels_file_invalid", f"{path}: not a labels file of format {LABELS_FORMAT}")
        entries = {key: label for key, value in raw["images"].items() if (label := ImageLabel.from_json(value))}
        return cls(path, entries)

    def save(self) -> None:
        document = {
            "format": LABELS_FORMAT,
            "images": {key: self.entries[key].to_json() for key in sorted(self.entries)},
        }
        text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
        # A temporary file beside it, then rename: a reader (or a crash) sees the old file or the new one.
        handle, temporary = tempfile.mkstemp(prefix=".invertornot-labels-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as output:
                output.write(text)
                output.flush()
                os.fsync(output.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def known(self, model: str) -> dict[str, ImageLabel]:
        """sha256 -> label for the images `model` already judged (whatever path they were found under)."""
        return {label.sha256: label for label in self.entries.values() if label.model == model}


# -- a run ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotateOptions:
    write: bool = False  # mark the images in the HTML pages
    check: bool = False  # classify nothing; report images without a label for their current contents
    fetch: bool = False  # fetch and classify remote images too
    site_url: str = DEFAULT_SITE_URL  # where the site is served: URLs under it are files of the folder
    labels_path: Path | None = None  # default: SITE_DIR/invertornot-labels.json
    workers: int = max(1, os.cpu_count() or 1)  # threads hashing and decoding
    batch_size: int = 32
    allow_private_networks: bool = False  # for --fetch from hosts on the local network


@dataclass
class Summary:
    """What a run found and did; `table()` is what the command prints."""

    html_pages: int = 0
    markdown_pages: int = 0
    images: int = 0  # distinct images the pages show
    manual: int = 0  # decided by the pages' own markup
    reused: int = 0  # labels file already knew their contents
    classified: int = 0  # images classified by this run (one per distinct content)
    invert: int = 0
    invert_not: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # key -> ImageError code (undecodable, ...)
    remote_skipped: int = 0  # remote images without --fetch
    fetch_failed: dict[str, str] = field(default_factory=dict)  # URL -> fetch error code
    missing: dict[str, list[str]] = field(default_factory=dict)  # referenced local files that do not exist
    unreadable_pages: dict[str, str] = field(default_factory=dict)
    unlabelled: list[str] = field(default_factory=list)  # --check: images without a current label
    pages_written: int = 0
    hash_seconds: float = 0.0
    classify_seconds: float = 0.0
    total_seconds: float = 0.0
    model: str = ""

    def table(self) -> str:
        rate = self.classified / self.classify_seconds if self.classify_seconds > 0 else 0.0
        hashed = self.images - self.manual
        rows: list[tuple[str, str]] = [
            ("pages", f"{self.html_pages} HTML, {self.markdown_pages} Markdown"),
            ("images", str(self.images)),
            ("  decided by page markup", str(self.manual)),
            ("  label reused (same hash, model)", str(self.reused)),
            ("  classified now", f"{self.classified}" + (f" ({rate:.1f} images/s)" if self.classified else "")),
            ("  could not be judged", str(len(self.errors))),
            ("  remote, skipped (use --fetch)", str(self.remote_skipped)),
            ("  remote, fetch failed", str(len(self.fetch_failed))),
            ("labelled invert / invert-not", f"{self.invert} / {self.invert_not}"),
            ("missing files referenced", str(len(self.missing))),
            ("pages rewritten", str(self.pages_written)),
            ("model", self.model or "-"),
            ("time", f"{self.total_seconds:.2f} s (hashing {self.hash_seconds:.2f} s for {hashed} images)"),
        ]
        if self.unlabelled:
            rows.append(("WITHOUT A CURRENT LABEL", str(len(self.unlabelled))))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


Loaded = Image.Image | ImageError
# (the sha256 the image was queued under, the sha256 of the bytes actually decoded, the image or its error)
Decoded = tuple[str, str, Loaded]


class Annotator:
    """One annotate run over one site folder."""

    def __init__(
        self,
        site: Path,
        options: AnnotateOptions | None = None,
        *,
        model: InvertModel | None = None,
        model_dir: Path | None = None,
        progress: ProgressFactory = no_progress,
    ) -> None:
        if not site.is_dir():
            raise AnnotateError("not_a_folder", f"{site} is not a folder")
        self.site = site.resolve()
        self.options = options or AnnotateOptions()
        self._model = model
        self._model_dir = model_dir
        self._progress = progress
        self.labels = LabelsFile.load(self.options.labels_path or self.site / LABELS_FILE)

    @property
    def model_version(self) -> str:
        if self._model is not None:
            return self._model.version
        from classifier.model import DEFAULT_MODEL_DIR, read_manifest

        # The manifest alone: a run with nothing to classify never loads the model.
        return read_manifest(self._model_dir or DEFAULT_MODEL_DIR).version

    def model(self) -> InvertModel:
        if self._model is None:
            from classifier.model import InvertModel

            self._model = InvertModel.load(self._model_dir)
        return self._model

    def run(self) -> Summary:
        started = time.perf_counter()
        scan = scan_site(self.site, self.options.site_url)
        summary = Summary(
            html_pages=len(scan.html_pages),
            markdown_pages=len(scan.markdown_pages),
            images=len(scan.images),
            missing={key: sorted(pages) for key, pages in scan.missing.items()},
            unreadable_pages=dict(scan.unreadable),
        )
        needed = [image for image in scan.images.values() if image.needs_label]
        summary.manual = len(scan.images) - len(needed)
        local = [image for image in needed if image.path is not None]
        remote = [image for image in needed if image.path is None]

        hashing = time.perf_counter()
        hashes = self._hash_files(local)
        fetched: dict[str, bytes] = {}
        if self.options.fetch and remote:
            fetched, summary.fetch_failed = self._fetch(image.key for image in remote)
            hashes.update({url: _sha256(data) for url, data in fetched.items()})
        elif remote:
            summary.remote_skipped = len(remote)
        summary.hash_seconds = time.perf_counter() - hashing

        if self.options.check:
            summary.unlabelled = self._unlabelled(needed, hashes)
            summary.model = self.model_version
        else:
            summary.model = self.model_version
            self._label(needed, hashes, fetched, summary)
        for image in needed:
            label = self.labels.entries.get(image.key)
            if label is not None and label.sha256 == hashes.get(image.key, label.sha256):
                if label.error is not None:
                    summary.errors[image.key] = label.error
                elif label.invert:
                    summary.invert += 1
                else:
                    summary.invert_not += 1
        if self.options.write and not self.options.check:
            summary.pages_written = self._write_pages(scan)
        summary.total_seconds = time.perf_counter() - started
        return summary

    # -- hashing and fetching --

    def _hash_files(self, images: list[SiteImage]) -> dict[str, str]:
        """key -> sha256 of each local image's current contents (unreadable files are left out)."""
        bar = self._progress(len(images), "hashing")
        hashes: dict[str, str] = {}
        try:
            with ThreadPoolExecutor(self.options.workers, thread_name_prefix="hash") as pool:
                for image, sha256 in zip(images, pool.map(_hash_file, [i.path for i in images]), strict=True):
                    if sha256 is not None:
                        hashes[image.key] = sha256
                    bar.update(1)
        finally:
            bar.close()
        return hashes

    def _fetch(self, urls: Iterable[str]) -> tuple[dict[str, bytes], dict[str, str]]:
        return asyncio.run(_fetch_all(list(urls), self.options.allow_private_networks))

    # -- checking --

    def _unlabelled(self, needed: list[SiteImage], hashes: dict[str, str]) -> list[str]:
        missing = []
        for image in needed:
            label = self.labels.entries.get(image.key)
            current = hashes.get(image.key)
            if image.path is None and not self.options.fetch:
                current = label.sha256 if label is not None else None  # cannot be verified without fetching
            if label is None or not label.labelled or current is None or label.sha256 != current:
                missing.append(image.key)
        return sorted(missing)

    # -- classifying --

    def _label(
        self, needed: list[SiteImage], hashes: dict[str, str], fetched: dict[str, bytes], summary: Summary
    ) -> None:
        version = self.model_version
        known = self.labels.known(version)
        todo: dict[str, list[SiteImage]] = {}  # sha256 -> the images with those contents
        for image in needed:
            sha256 = hashes.get(image.key)
            if sha256 is None:
                continue  # unreadable, a failed fetch or a skipped remote image
            current = self.labels.entries.get(image.key)
            if current is not None and current.sha256 == sha256 and current.model == version:
                summary.reused += 1
            elif sha256 in known:
                self.labels.entries[image.key] = known[sha256]
                summary.reused += 1
            else:
                todo.setdefault(sha256, []).append(image)
        if not todo:
            self._finish(needed)
            return
        classifying = time.perf_counter()
        model = self.model()
        sources: list[tuple[str, Path | bytes]] = [
            (sha256, images[0].path if images[0].path is not None else fetched[images[0].key])
            for sha256, images in todo.items()
        ]
        bar = self._progress(len(sources), "classifying")
        try:
            for batch in self._decoded_batches(sources, getattr(model, "max_pixels", DEFAULT_MAX_PIXELS)):
                decoded = [(queued, read, item) for queued, read, item in batch if isinstance(item, Image.Image)]
                verdicts = model.predict([item for _, _, item in decoded], [read for _, read, _ in decoded])
                labels = [
                    (queued, ImageLabel(verdict.sha256, verdict.model, verdict.invert, verdict.p_invert))
                    for (queued, _, _), verdict in zip(decoded, verdicts, strict=True)
                ]
                labels += [
                    (queued, ImageLabel(read, version, error=item.code))
                    for queued, read, item in batch
                    if isinstance(item, ImageError)
                ]
                for queued, label in labels:
                    # Labelled with the hash of what was classified (a file may change between the passes).
                    for image in todo[queued]:
                        self.labels.entries[image.key] = label
                    summary.classified += 1
                self.labels.save()  # after every batch: an interrupted run resumes from here
                bar.update(len(batch))
        finally:
            bar.close()
        summary.classify_seconds = time.perf_counter() - classifying
        self._finish(needed)

    def _finish(self, needed: list[SiteImage]) -> None:
        """Forget images no page shows any more, then save."""
        current = {image.key for image in needed}
        self.labels.entries = {key: label for key, label in self.labels.entries.items() if key in current}
        self.labels.save()

    def _decoded_batches(self, sources: list[tuple[str, Path | bytes]], max_pixels: int) -> Iterable[list[Decoded]]:
        """Batches of (sha256, decoded image or error) in order; the next images decode while the caller
        classifies this batch. At most a few batches are decoded ahead (memory stays bounded)."""
        size = self.options.batch_size
        ahead = max(2 * size, self.options.workers * 4)
        pending = iter(sources)
        window: deque[Future[Decoded]] = deque()
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="decode") as pool:

            def refill() -> None:
                while len(window) < ahead:
                    item = next(pending, None)
                    if item is None:
                        return
                    window.append(pool.submit(_load, item[0], item[1], max_pixels))

            refill()
            while window:
                batch = [window.popleft().result() for _ in range(min(size, len(window)))]
                refill()
                yield batch

    # -- writing pages --

    def _write_pages(self, scan: SiteScan) -> int:
        mapping = SiteMap(scan.site, scan.site_url)
        written = 0
        for page in scan.html_pages:
            name = page.relative_to(scan.site).as_posix()
            if name in scan.unreadable:
                continue
            html = page.read_text(encoding="utf-8")
            try:
                parsed = Page(html, mapping.page_url(page), SITE_OPTIONS)
                marks = self._marks(mapping, parsed)
            except RewriteError:
                continue
            if not marks:
                continue
            rewritten = parsed.rewrite(marks)
            if rewritten != html:
                _write_atomically(page, rewritten)
                written += 1
        return written

    def _marks(self, mapping: SiteMap, page: Page) -> dict[str, Mark]:
        marks = {}
        for ref in page.images():
            if ref.manual is not None:
                continue
            label = self.labels.entries.get(mapping.local_key(ref.url) or ref.url)
            if label is not None and label.invert is not None:
                marks[ref.url] = Mark(label.invert, label.p_invert, label.model)
        return marks


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_file(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _load(queued: str, source: Path | bytes, max_pixels: int) -> Decoded:
    """Read (if a file) and decode one image in a worker thread, hashing the bytes actually decoded."""
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as error:
            return queued, queued, ImageError("empty", f"cannot read {source}: {error.strerror}")
    else:
        data = source
    try:
        return queued, _sha256(data), decode_image(data, max_pixels=max_pixels)
    except ImageError as error:
        return queued, _sha256(data), error


async def _fetch_all(urls: list[str], allow_private: bool) -> tuple[dict[str, bytes], dict[str, str]]:
    from proxy.errors import ApiError
    from proxy.fetch import FetchPolicy, SafeFetcher, create_client_session

    policy = FetchPolicy(allow_private_networks=allow_private)
    bodies: dict[str, bytes] = {}
    failures: dict[str, str] = {}
    slots = asyncio.Semaphore(FETCH_CONCURRENCY)
    async with create_client_session(policy) as session:
        fetcher = SafeFetcher(session, policy)

        async def one(url: str) -> None:
            async with slots:
                try:
                    bodies[url] = (await fetcher.fetch_image(url)).body
                except ApiError as error:
                    failures[url] = error.code

        await asyncio.gather(*(one(url) for url in urls))
    return bodies, failures


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            output.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o7777)  # keep the page's permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
