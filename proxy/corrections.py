"""The durable store of corrections (users reporting wrong verdicts) and labels (decisions people made).

* A **correction** says "image X should (not) be inverted". With a valid API token it is trusted: accepted at
  once, and it becomes a label. Anonymous ones wait as `pending` until a person accepts or rejects them.
* A **label** is one decision about one image, with who made it and when. Labels are append-only; an image's
  label is its newest one. Labels are what the service applies before the model (`label_of`), what
  `invertornot train` merges into the training set, and what `invertornot export-labels` releases.

`CorrectionStore` is the interface the service uses; `SqliteCorrectionStore` implements it on one SQLite file
in WAL mode with `synchronous=FULL`, so every commit is fsync'd before the call returns: nothing the API
acknowledged is lost, whatever happens to the process afterwards. A PostgreSQL implementation only has to
implement the same abstract methods (the SQL here is deliberately plain).

The labels are also kept in memory (`label_of` is on the hot path of every verdict). Each instance loads them
at startup and updates them on its own writes; several instances sharing one database would need to refresh.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from proxy.errors import ApiError, NotFound
from proxy.image_store import DirectoryImageStore, ImageStore, MemoryImageStore

T = TypeVar("T")
Status = Literal["pending", "accepted", "rejected"]
ANONYMOUS = "anonymous"
#: Bumped when the schema changes; `open` refuses a database written by a newer version.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    sha256 TEXT NOT NULL,
    invert INTEGER NOT NULL CHECK (invert IN (0, 1)),
    url TEXT,
    note TEXT NOT NULL DEFAULT '',
    submitted_by TEXT NOT NULL,
    trusted INTEGER NOT NULL CHECK (trusted IN (0, 1)),
    client TEXT NOT NULL,
    origin TEXT NOT NULL,
    answered_model TEXT,
    answered_p_invert REAL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    decided_by TEXT,
    decided_at REAL
);
CREATE INDEX IF NOT EXISTS corrections_by_status ON corrections (status, id);
CREATE INDEX IF NOT EXISTS corrections_by_image ON corrections (sha256, status);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    invert INTEGER NOT NULL CHECK (invert IN (0, 1)),
    labelled_by TEXT NOT NULL,
    labelled_at REAL NOT NULL,
    origin TEXT NOT NULL,
    correction_id INTEGER REFERENCES corrections (id)
);
CREATE INDEX IF NOT EXISTS labels_by_image ON labels (sha256, id);
"""


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- records -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorrectionRequest:
    """A correction as it arrives. `answered_*` record what the service said when it was reported."""

    sha256: str
    invert: bool
    submitted_by: str  # the API token's name, or ANONYMOUS
    trusted: bool
    client: str  # the client's IP address (rate limiting, abuse review; never exported)
    origin: str  # "api" (POST /api/v1/corrections) or "compat" (POST /api/correction)
    url: str | None = None
    note: str = ""
    answered_model: str | None = None
    answered_p_invert: float | None = None


@dataclass(frozen=True, slots=True)
class Correction:
    id: int
    created_at: float
    sha256: str
    invert: bool
    url: str | None
    note: str
    submitted_by: str
    trusted: bool
    client: str
    origin: str
    answered_model: str | None
    answered_p_invert: float | None
    status: Status
    decided_by: str | None
    decided_at: float | None

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        del body["client"]  # personal data: kept for abuse handling, not shown
        body["created_at"] = iso_time(self.created_at)
        body["decided_at"] = iso_time(self.decided_at)
        return body


@dataclass(frozen=True, slots=True)
class LabelRequest:
    sha256: str
    invert: bool
    labelled_by: str
    origin: str  # "correction", "review", or "label:<queue>" for the labelling page


@dataclass(frozen=True, slots=True)
class Label:
    id: int
    sha256: str
    invert: bool
    labelled_by: str
    labelled_at: float
    origin: str
    correction_id: int | None


@dataclass(frozen=True)
class LabelOutcome:
    """What storing labels did: the labels, and the pending corrections they settled."""

    labels: list[Label]
    accepted: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PendingImage:
    """One image of the review queue: every pending correction of it, the newest suggestion first."""

    sha256: str
    correction_ids: list[int]
    suggested_invert: bool  # the newest pending correction's
    url: str | None
    first_reported_at: float


# -- errors --------------------------------------------------------------------------------------------


def pending_image(sha256: str, rows: Sequence[Sequence[Any]], first: float) -> PendingImage:
    """One review-queue entry from its pending `(id, invert, url)` rows, newest first (both stores)."""
    url = next((row[2] for row in rows if row[2]), None)
    return PendingImage(sha256, [row[0] for row in rows], bool(rows[0][1]), url, first)


class UnknownCorrection(NotFound):
    default_code = "unknown_correction"


class AlreadyDecided(ApiError):
    status = 409
    default_code = "already_decided"


class ReviewQueueFull(ApiError):
    status = 503
    default_code = "review_queue_full"


class StoreError(RuntimeError):
    """A database that cannot be used (bad URL, newer schema)."""


# -- the interface -------------------------------------------------------------------------------------------


class CorrectionStore(ABC):
    """Corrections and labels, durable once a coroutine returns. `images` holds their images."""

    def __init__(self, images: ImageStore) -> None:
        self.images = images

    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema if needed and load the labels into memory."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def label_of(self, sha256: str) -> bool | None:
        """The image's current label (newest decision), from memory: never blocks."""

    @abstractmethod
    def labelled_images(self) -> list[str]:
        """SHA-256 of every labelled image, from memory."""

    @abstractmethod
    async def submit(self, request: CorrectionRequest) -> Correction:
        """Record a correction. Trusted: accepted and labelled in the same transaction (which settles the
        image's pending corrections, as any label does). Anonymous: pending; a repeat of a pending report
        (same image, answer and client) returns the existing one."""

    @abstractmethod
    async def get(self, correction_id: int) -> Correction | None: ...

    @abstractmethod
    async def corrections(
        self, *, status: Status | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Correction]:
        """Corrections with `id > after_id` in id order (a cursor for paging)."""

    @abstractmethod
    async def pending_images(self, limit: int) -> list[PendingImage]:
        """The review queue by image, oldest report first."""

    @abstractmethod
    async def review(self, correction_id: int, *, accept: bool, by: str) -> Correction:
        """Accept (it becomes a label, settling the image's other pending corrections) or reject a pending
        correction; `AlreadyDecided` if it is not pending."""

    @abstractmethod
    async def add_labels(self, labels: Sequence[LabelRequest]) -> LabelOutcome:
        """Store decisions. Pending corrections of those images are settled by them: accepted when they
        suggested the same answer, rejected otherwise."""

    @abstractmethod
    async def labels(self) -> list[Label]:
        """The current label of every labelled image (its newest), oldest first."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """Corrections by status, and labelled images."""

    @abstractmethod
    async def image_urls(self) -> dict[str, str]:
        """Where each corrected image was reported from (its first URL): provenance for exports."""

    async def store_image(self, data: bytes) -> str:
        """Keep an image (durably, before any row refers to it); returns its SHA-256."""
        return await asyncio.to_thread(self.images.put, data)

    async def image(self, sha256: str) -> bytes | None:
        return await asyncio.to_thread(self.images.get, sha256)

    async def has_image(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.images.has, sha256)


# -- SQLite --------------------------------------------------------------------------------------------------

_CORRECTION_COLUMNS = (
    "id, created_at, sha256, invert, url, note, submitted_by, trusted, client, origin, answered_model, "
    "answered_p_invert, status, decided_by, decided_at"
)
_LABEL_COLUMNS = "id, sha256, invert, labelled_by, labelled_at, origin, correction_id"


def _correction(row: sqlite3.Row | tuple[Any, ...]) -> Correction:
    (id_, created, sha256, invert, url, note, by, trusted, client, origin, model, p, status, decider, decided) = row
    return Correction(
        id_,
        created,
        sha256,
        bool(invert),
        url,
        note,
        by,
        bool(trusted),
        client,
        origin,
        model,
        p,
        status,
        decider,
        decided,
    )


def _label(row: tuple[Any, ...]) -> Label:
    id_, sha256, invert, by, at, origin, correction_id = row
    return Label(id_, sha256, bool(invert), by, at, origin, correction_id)


class SqliteCorrectionStore(CorrectionStore):
    """One SQLite file (or memory, `path=None`), used from one dedicated thread so the loop never waits on disk."""

    def __init__(
        self,
        path: Path | None,
        images: ImageStore,
        *,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(images)
        self.path = path
        self.max_pending = max_pending
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        # sha256 -> label. Written only by the database thread, right after each commit, so it follows the
        # commit order; read from the loop: a lookup is atomic, a full copy takes the lock.
        self._labels: dict[str, bool] = {}
        self._labels_lock = threading.Lock()

    # -- plumbing --

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the correction store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args, **kwargs))

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the correction store is not open")
        return self._connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: read-then-write sequences (dedupe, review) cannot race
        # another process writing the same file.
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- lifecycle --

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corrections-db")
        try:
            await self._run(self._open)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = ":memory:" if self.path is None else str(self.path)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT), not the module's guesses.
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._connection = db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{target}: written by a newer version (schema {version}, this code reads {SCHEMA_VERSION})"
            )
        if self.path is not None:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{target}: cannot switch to WAL journaling (got {mode!r})")
        # FULL: in WAL mode the log is fsync'd at every commit, so a commit survives a crash or power loss.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._labels = {label.sha256: label.invert for label in self._current_labels()}

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._connection is not None:
            await self._run(self._connection.close)
            self._connection = None
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- labels in memory --

    def label_of(self, sha256: str) -> bool | None:
        return self._labels.get(sha256)

    def labelled_images(self) -> list[str]:
        with self._labels_lock:
            return list(self._labels)

    def _remember(self, sha256: str, invert: bool) -> None:
        with self._labels_lock:
            self._labels[sha256] = invert

    # -- corrections --

    async def submit(self, request: CorrectionRequest) -> Correction:
        return await self._run(self._submit, request)

    def _submit(self, request: CorrectionRequest) -> Correction:
        now = self._clock()
        with self._transaction() as db:
            if not request.trusted:
                repeat = db.execute(
                    f"SELECT {_CORRECTION_COLUMNS} FROM corrections WHERE sha256 = ? AND invert = ? AND client = ? "
                    "AND status = 'pending' AND trusted = 0 ORDER BY id LIMIT 1",
                    (request.sha256, int(request.invert), request.client),
                ).fetchone()
                if repeat is not None:
                    return _correction(repeat)
                (pending,) = db.execute("SELECT COUNT(*) FROM corrections WHERE status = 'pending'").fetchone()
                if pending >= self.max_pending:
                    raise ReviewQueueFull(f"{pending} corrections are waiting for review; try again later")
            status: Status = "accepted" if request.trusted else "pending"
            decided_by, decided_at = (request.submitted_by, now) if request.trusted else (None, None)
            cursor = db.execute(
                "INSERT INTO corrections (created_at, sha256, invert, url, note, submitted_by, trusted, client, "
                "origin, answered_model, answered_p_invert, status, decided_by, decided_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    request.sha256,
                    int(request.invert),
                    request.url,
                    request.note,
                    request.submitted_by,
                    int(request.trusted),
                    request.client,
                    request.origin,
                    request.answered_model,
                    request.answered_p_invert,
                    status,
                    decided_by,
                    decided_at,
                ),
            )
            correction_id = cursor.lastrowid
            assert correction_id is not None
            if request.trusted:
                label = LabelRequest(request.sha256, request.invert, request.submitted_by, "correction")
                self._insert_label(db, label, now, correction_id)
                self._settle(db, label, now)
        if request.trusted:
            self._remember(request.sha256, request.invert)
        found = self._get(correction_id)
        assert found is not None
        return found

    async def get(self, correction_id: int) -> Correction | None:
        return await self._run(self._get, correction_id)

    def _get(self, correction_id: int) -> Correction | None:
        row = self._db.execute(
            f"SELECT {_CORRECTION_COLUMNS} FROM corrections WHERE id = ?", (correction_id,)
        ).fetchone()
        return None if row is None else _correction(row)

    async def corrections(
        self, *, status: Status | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Correction]:
        return await self._run(self._corrections, status, after_id, limit)

    def _corrections(self, status: Status | None, after_id: int, limit: int) -> list[Correction]:
        rows = self._db.execute(
            f"SELECT {_CORRECTION_COLUMNS} FROM corrections WHERE (? IS NULL OR status = ?) AND id > ? "
            "ORDER BY id LIMIT ?",
            (status, status, after_id, limit),
        ).fetchall()
        return [_correction(row) for row in rows]

    async def pending_images(self, limit: int) -> list[PendingImage]:
        return await self._run(self._pending_images, limit)

    def _pending_images(self, limit: int) -> list[PendingImage]:
        images = self._db.execute(
            "SELECT sha256, MIN(created_at) FROM corrections WHERE status = 'pending' "
            "GROUP BY sha256 ORDER BY MIN(id) LIMIT ?",
            (limit,),
        ).fetchall()
        queue = []
        for sha256, first in images:
            rows = self._db.execute(
                "SELECT id, invert, url FROM corrections WHERE sha256 = ? AND status = 'pending' ORDER BY id DESC",
                (sha256,),
            ).fetchall()
            queue.append(pending_image(sha256, rows, first))
        return queue

    async def review(self, correction_id: int, *, accept: bool, by: str) -> Correction:
        return await self._run(self._review, correction_id, accept, by)

    def _review(self, correction_id: int, accept: bool, by: str) -> Correction:
        now = self._clock()
        with self._transaction() as db:
            found = self._get(correction_id)
            if found is None:
                raise UnknownCorrection(f"no correction with id {correction_id}")
            if found.status != "pending":
                raise AlreadyDecided(f"correction {correction_id} was already {found.status} by {found.decided_by}")
            db.execute(
                "UPDATE corrections SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?",
                ("accepted" if accept else "rejected", by, now, correction_id),
            )
            if accept:
                label = LabelRequest(found.sha256, found.invert, by, "review")
                self._insert_label(db, label, now, correction_id)
                self._settle(db, label, now)  # the image is decided: its other reports too
        if accept:
            self._remember(found.sha256, found.invert)
        reviewed = self._get(correction_id)
        assert reviewed is not None
        return reviewed

    # -- labels --

    def _settle(self, db: sqlite3.Connection, label: LabelRequest, now: float) -> tuple[list[int], list[int]]:
        """A label decides the image: its pending corrections are accepted if they agree, else rejected."""
        accepted: list[int] = []
        rejected: list[int] = []
        pending = db.execute(
            "SELECT id, invert FROM corrections WHERE sha256 = ? AND status = 'pending'", (label.sha256,)
        ).fetchall()
        for correction_id, invert in pending:
            agrees = bool(invert) == label.invert
            db.execute(
                "UPDATE corrections SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?",
                ("accepted" if agrees else "rejected", label.labelled_by, now, correction_id),
            )
            (accepted if agrees else rejected).append(correction_id)
        return accepted, rejected

    def _insert_label(
        self, db: sqlite3.Connection, label: LabelRequest, now: float, correction_id: int | None
    ) -> Label:
        cursor = db.execute(
            "INSERT INTO labels (sha256, invert, labelled_by, labelled_at, origin, correction_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (label.sha256, int(label.invert), label.labelled_by, now, label.origin, correction_id),
        )
        assert cursor.lastrowid is not None
        return Label(cursor.lastrowid, label.sha256, label.invert, label.labelled_by, now, label.origin, correction_id)

    async def add_labels(self, labels: Sequence[LabelRequest]) -> LabelOutcome:
        return await self._run(self._add_labels, list(labels))

    def _add_labels(self, labels: list[LabelRequest]) -> LabelOutcome:
        now = self._clock()
        stored: list[Label] = []
        accepted: list[int] = []
        rejected: list[int] = []
        with self._transaction() as db:
            for label in labels:
                stored.append(self._insert_label(db, label, now, None))
                agreed, disagreed = self._settle(db, label, now)
                accepted += agreed
                rejected += disagreed
        for label in labels:
            self._remember(label.sha256, label.invert)
        return LabelOutcome(stored, accepted, rejected)

    async def labels(self) -> list[Label]:
        return await self._run(self._current_labels)

    def _current_labels(self) -> list[Label]:
        rows = self._db.execute(
            f"SELECT {_LABEL_COLUMNS} FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY sha256) ORDER BY id"
        ).fetchall()
        return [_label(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        counts = {"pending": 0, "accepted": 0, "rejected": 0}
        for status, count in self._db.execute("SELECT status, COUNT(*) FROM corrections GROUP BY status"):
            counts[status] = count
        (counts["labelled_images"],) = self._db.execute("SELECT COUNT(DISTINCT sha256) FROM labels").fetchone()
        return counts

    async def image_urls(self) -> dict[str, str]:
        return await self._run(self._image_urls)

    def _image_urls(self) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT sha256, url FROM corrections WHERE id IN "
            "(SELECT MIN(id) FROM corrections WHERE url IS NOT NULL GROUP BY sha256)"
        ).fetchall()
        return dict(rows)


# -- opening a store from a URL ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseUrl:
    scheme: Literal["sqlite", "postgresql"]
    path: Path | None  # SQLite file; None: in memory (or a PostgreSQL server)
    url: str = ""

    def default_images_dir(self) -> Path | None:
        """Beside the database file: `./invertornot.db` keeps its images in `./invertornot-images/`.

        A PostgreSQL database has no file to sit beside, so its images go to `./invertornot-images/`.
        """
        if self.scheme == "postgresql":
            return Path("invertornot-images")
        return None if self.path is None else self.path.with_name(f"{self.path.stem}-images")


def parse_database_url(url: str) -> DatabaseUrl:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://` (memory) or `postgresql://...`.

    Raises ValueError.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise ValueError(f"not a database URL: {url!r}; expected sqlite:///PATH or postgresql://...")
    if scheme in ("postgres", "postgresql"):
        return DatabaseUrl("postgresql", None, url)
    if scheme != "sqlite":
        raise ValueError(f"unsupported database {scheme!r}; expected sqlite:///PATH")
    if rest in ("", "/:memory:"):
        return DatabaseUrl("sqlite", None)
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"expected sqlite:///PATH (three slashes), got {url!r}")
    return DatabaseUrl("sqlite", Path(rest[1:]))


def create_store(database_url: str, *, images_dir: Path | None = None, max_pending: int = 100_000) -> CorrectionStore:
    """The store for `database_url` (not opened yet). Images go to `images_dir`, by default beside the database."""
    location = parse_database_url(database_url)
    directory = images_dir or location.default_images_dir()
    images: ImageStore = MemoryImageStore() if directory is None else DirectoryImageStore(directory)
    if location.scheme == "postgresql":
        # Imported here: psycopg is the optional `postgres` extra, and SQLite needs none of it.
        from proxy.corrections_postgres import PostgresCorrectionStore

        return PostgresCorrectionStore(location.url, images, max_pending=max_pending)
    return SqliteCorrectionStore(location.path, images, max_pending=max_pending)
