"""The corrections store on PostgreSQL, for several instances sharing one database (`--database-url
postgresql://...`); SQLite (`proxy.corrections`) stays the single-node default. Same interface, same tests.

* Writes that read first (the duplicate check and queue bound of `submit`, `review`) must not interleave
  between instances: every write transaction takes one transaction-scoped advisory lock, as SQLite's
  `BEGIN IMMEDIATE` takes its write lock. Corrections are rare; one writer at a time costs nothing.
* Labels are kept in memory (`label_of` is on the hot path of every verdict) and kept current across
  instances by PostgreSQL itself: each new label is announced with `NOTIFY` in its transaction (delivered on
  commit), and every store `LISTEN`s on a second connection. An instance that lost that connection reloads
  every label when it is back. Labels carry their id, so an older notification never overwrites a newer
  label, whatever order they arrive in.
* A database that goes away answers 503 `database_unavailable`; the next call connects again.

Needs the optional `psycopg` (v3) package: `pip install 'invertornot-proxy[postgres]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection

from proxy.corrections import (
    SCHEMA_VERSION,
    AlreadyDecided,
    Correction,
    CorrectionRequest,
    CorrectionStore,
    Label,
    LabelOutcome,
    LabelRequest,
    PendingImage,
    ReviewQueueFull,
    Status,
    StoreError,
    UnknownCorrection,
    pending_image,
)
from proxy.errors import ApiError
from proxy.image_store import ImageStore

log = logging.getLogger(__name__)

SCHEMES = ("postgresql", "postgres")
CHANNEL = "invertornot_labels"
#: The advisory lock every write transaction holds (an arbitrary constant: b"invert" as a number).
WRITE_LOCK = 0x696E_7665_7274
# Seconds between attempts to listen again after the notification connection dropped.
_RELISTEN_SECONDS = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invertornot_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invertornot_corrections (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    sha256 TEXT NOT NULL,
    invert BOOLEAN NOT NULL,
    url TEXT,
    note TEXT NOT NULL DEFAULT '',
    submitted_by TEXT NOT NULL,
    trusted BOOLEAN NOT NULL,
    client TEXT NOT NULL,
    origin TEXT NOT NULL,
    answered_model TEXT,
    answered_p_invert DOUBLE PRECISION,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    decided_by TEXT,
    decided_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS invertornot_corrections_by_status ON invertornot_corrections (status, id);
CREATE INDEX IF NOT EXISTS invertornot_corrections_by_image ON invertornot_corrections (sha256, status);
CREATE TABLE IF NOT EXISTS invertornot_labels (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256 TEXT NOT NULL,
    invert BOOLEAN NOT NULL,
    labelled_by TEXT NOT NULL,
    labelled_at DOUBLE PRECISION NOT NULL,
    origin TEXT NOT NULL,
    correction_id BIGINT REFERENCES invertornot_corrections (id)
);
CREATE INDEX IF NOT EXISTS invertornot_labels_by_image ON invertornot_labels (sha256, id);
"""
_CORRECTION_COLUMNS = (
    "id, created_at, sha256, invert, url, note, submitted_by, trusted, client, origin, answered_model, "
    "answered_p_invert, status, decided_by, decided_at"
)
_LABEL_COLUMNS = "id, sha256, invert, labelled_by, labelled_at, origin, correction_id"
_CURRENT_LABELS = (
    f"SELECT {_LABEL_COLUMNS} FROM invertornot_labels WHERE id IN "
    "(SELECT MAX(id) FROM invertornot_labels GROUP BY sha256) ORDER BY id"
)


class DatabaseUnavailable(ApiError):
    status = 503
    default_code = "database_unavailable"


def is_postgres_url(url: str) -> bool:
    return url.partition("://")[0] in SCHEMES


def _correction(row: Sequence[Any]) -> Correction:
    return Correction(*row)


def _label(row: Sequence[Any]) -> Label:
    return Label(*row)


class PostgresCorrectionStore(CorrectionStore):
    """Corrections and labels in one PostgreSQL database, shared by any number of instances."""

    def __init__(
        self,
        url: str,
        images: ImageStore,
        *,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 5.0,
    ) -> None:
        if not is_postgres_url(url):
            raise ValueError(f"not a PostgreSQL URL: expected postgresql://..., got {url.partition('://')[0]!r}")
        super().__init__(images)
        self.url = url
        self.max_pending = max_pending
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._connection: AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()  # one statement sequence at a time on the one connection
        # sha256 -> (label id, invert): the newest label known, by id.
        self._labels: dict[str, tuple[int, bool]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    # -- plumbing --

    async def _connect(self) -> AsyncConnection[Any]:
        return await AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
        )

    @contextlib.asynccontextmanager
    async def _db(self) -> AsyncIterator[AsyncConnection[Any]]:
        """The connection, (re)connected if needed; one user at a time. Connection failures become 503."""
        async with self._lock:
            try:
                if self._connection is None or self._connection.closed or self._connection.broken:
                    self._connection = await self._connect()
                yield self._connection
            except psycopg.OperationalError as error:
                log.warning("corrections database unavailable: %s", error)
                raise DatabaseUnavailable("the corrections database is unavailable; try again later") from None

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A write transaction holding the store-wide write lock (across instances)."""
        async with self._db() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield db

    # -- lifecycle --

    async def open(self) -> None:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        try:
            async with self._write() as db:
                await db.execute(_SCHEMA)
                row = await (await db.execute("SELECT MAX(version) FROM invertornot_schema")).fetchone()
                version = row[0] if row is not None else None
                if version is None:
                    await db.execute("INSERT INTO invertornot_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
                elif version > SCHEMA_VERSION:
                    raise StoreError(
                        f"the database was written by a newer version (schema {version}, this code reads "
                        f"{SCHEMA_VERSION})"
                    )
        except DatabaseUnavailable as error:
            raise StoreError(f"cannot open the corrections database: {error.message}") from None
        self._listener = asyncio.create_task(self._listen(), name="corrections-listen")
        # Labels are loaded once the listener is subscribed, so none committed in between is missed.
        listening = asyncio.ensure_future(self._listening.wait())
        try:
            await asyncio.wait(
                [listening, self._listener], timeout=self._connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            listening.cancel()
        await self._reload_labels()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        async with self._lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None

    # -- labels in memory, kept current by NOTIFY --

    async def _reload_labels(self) -> None:
        async with self._db() as db:
            rows = await (await db.execute(f"SELECT id, sha256, invert FROM ({_CURRENT_LABELS}) AS current")).fetchall()
        for label_id, sha256, invert in rows:
            self._learn(sha256, label_id, invert)

    def _learn(self, sha256: str, label_id: int, invert: bool) -> None:
        known = self._labels.get(sha256)
        if known is None or known[0] < label_id:
            self._labels[sha256] = (label_id, invert)

    async def _listen(self) -> None:
        first = True
        while True:
            try:
                connection = await self._connect()
            except psycopg.OperationalError as error:
                log.warning("corrections database: cannot listen for labels (%s); retrying", error)
                await asyncio.sleep(_RELISTEN_SECONDS)
                continue
            try:
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if not first:  # labels committed while not listening
                        await self._reload_labels()
                    first = False
                    self._listening.set()
                    async for notification in connection.notifies():
                        self._notified(notification.payload)
            except psycopg.OperationalError as error:
                log.warning("corrections database: label notifications interrupted (%s); reconnecting", error)
                await asyncio.sleep(_RELISTEN_SECONDS)
            except DatabaseUnavailable:
                await asyncio.sleep(_RELISTEN_SECONDS)

    def _notified(self, payload: str) -> None:
        try:
            sha256, label_id, invert = payload.split()
            self._learn(sha256, int(label_id), invert == "1")
        except ValueError:
            log.warning("corrections database: ignoring a malformed label notification %.100r", payload)

    def label_of(self, sha256: str) -> bool | None:
        known = self._labels.get(sha256)
        return None if known is None else known[1]

    def labelled_images(self) -> list[str]:
        return list(self._labels)

    # -- corrections --

    async def submit(self, request: CorrectionRequest) -> Correction:
        now = self._clock()
        async with self._write() as db:
            if not request.trusted:
                repeat = await (
                    await db.execute(
                        f"SELECT {_CORRECTION_COLUMNS} FROM invertornot_corrections WHERE sha256 = %s AND invert = %s "
                        "AND client = %s AND status = 'pending' AND NOT trusted ORDER BY id LIMIT 1",
                        (request.sha256, request.invert, request.client),
                    )
                ).fetchone()
                if repeat is not None:
                    return _correction(repeat)
                counted = await (
                    await db.execute("SELECT COUNT(*) FROM invertornot_corrections WHERE status = 'pending'")
                ).fetchone()
                pending = counted[0] if counted is not None else 0
                if pending >= self.max_pending:
                    raise ReviewQueueFull(f"{pending} corrections are waiting for review; try again later")
            status: Status = "accepted" if request.trusted else "pending"
            decided_by, decided_at = (request.submitted_by, now) if request.trusted else (None, None)
            inserted = await (
                await db.execute(
                    "INSERT INTO invertornot_corrections (created_at, sha256, invert, url, note, submitted_by, "
                    "trusted, client, origin, answered_model, answered_p_invert, status, decided_by, decided_at) "
                    f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_CORRECTION_COLUMNS}",
                    (
                        now,
                        request.sha256,
                        request.invert,
                        request.url,
                        request.note,
                        request.submitted_by,
                        request.trusted,
                        request.client,
                        request.origin,
                        request.answered_model,
                        request.answered_p_invert,
                        status,
                        decided_by,
                        decided_at,
                    ),
                )
            ).fetchone()
            assert inserted is not None
            correction = _correction(inserted)
            label = None
            if request.trusted:
                asked = LabelRequest(request.sha256, request.invert, request.submitted_by, "correction")
                label = await self._insert_label(db, asked, now, correction.id)
                await self._settle(db, asked, now)
        if label is not None:
            self._learn(label.sha256, label.id, label.invert)
        return correction

    async def get(self, correction_id: int) -> Correction | None:
        async with self._db() as db:
            return await self._get(db, correction_id)

    async def _get(
        self, db: AsyncConnection[Any], correction_id: int, *, for_update: bool = False
    ) -> Correction | None:
        row = await (
            await db.execute(
                f"SELECT {_CORRECTION_COLUMNS} FROM invertornot_corrections WHERE id = %s"
                + (" FOR UPDATE" if for_update else ""),
                (correction_id,),
            )
        ).fetchone()
        return None if row is None else _correction(row)

    async def corrections(
        self, *, status: Status | None = None, after_id: int = 0, limit: int = 100
    ) -> list[Correction]:
        async with self._db() as db:
            rows = await (
                await db.execute(
                    f"SELECT {_CORRECTION_COLUMNS} FROM invertornot_corrections "
                    "WHERE (%s::text IS NULL OR status = %s) AND id > %s ORDER BY id LIMIT %s",
                    (status, status, after_id, limit),
                )
            ).fetchall()
        return [_correction(row) for row in rows]

    async def pending_images(self, limit: int) -> list[PendingImage]:
        async with self._db() as db:
            images = await (
                await db.execute(
                    "SELECT sha256, MIN(created_at) FROM invertornot_corrections WHERE status = 'pending' "
                    "GROUP BY sha256 ORDER BY MIN(id) LIMIT %s",
                    (limit,),
                )
            ).fetchall()
            queue = []
            for sha256, first in images:
                rows = await (
                    await db.execute(
                        "SELECT id, invert, url FROM invertornot_corrections WHERE sha256 = %s AND status = 'pending' "
                        "ORDER BY id DESC",
                        (sha256,),
                    )
                ).fetchall()
                queue.append(pending_image(sha256, rows, first))
        return queue

    async def review(self, correction_id: int, *, accept: bool, by: str) -> Correction:
        now = self._clock()
        label = None
        async with self._write() as db:
            found = await self._get(db, correction_id, for_update=True)
            if found is None:
                raise UnknownCorrection(f"no correction with id {correction_id}")
            if found.status != "pending":
                raise AlreadyDecided(f"correction {correction_id} was already {found.status} by {found.decided_by}")
            await db.execute(
                "UPDATE invertornot_corrections SET status = %s, decided_by = %s, decided_at = %s WHERE id = %s",
                ("accepted" if accept else "rejected", by, now, correction_id),
            )
            if accept:
                asked = LabelRequest(found.sha256, found.invert, by, "review")
                label = await self._insert_label(db, asked, now, correction_id)
                await self._settle(db, asked, now)  # the image is decided: its other reports too
            reviewed = await self._get(db, correction_id)
        if label is not None:
            self._learn(label.sha256, label.id, label.invert)
        assert reviewed is not None
        return reviewed

    # -- labels --

    async def _settle(self, db: AsyncConnection[Any], label: LabelRequest, now: float) -> tuple[list[int], list[int]]:
        """A label decides the image: its pending corrections are accepted if they agree, else rejected."""
        rows = await (
            await db.execute(
                "UPDATE invertornot_corrections "
                "SET status = CASE WHEN invert = %s THEN 'accepted' ELSE 'rejected' END, "
                "decided_by = %s, decided_at = %s WHERE sha256 = %s AND status = 'pending' RETURNING id, status",
                (label.invert, label.labelled_by, now, label.sha256),
            )
        ).fetchall()
        accepted = sorted(row[0] for row in rows if row[1] == "accepted")
        rejected = sorted(row[0] for row in rows if row[1] == "rejected")
        return accepted, rejected

    async def _insert_label(
        self, db: AsyncConnection[Any], label: LabelRequest, now: float, correction_id: int | None
    ) -> Label:
        row = await (
            await db.execute(
                "INSERT INTO invertornot_labels (sha256, invert, labelled_by, labelled_at, origin, correction_id) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_LABEL_COLUMNS}",
                (label.sha256, label.invert, label.labelled_by, now, label.origin, correction_id),
            )
        ).fetchone()
        assert row is not None
        stored = _label(row)
        # Delivered to every listening instance when (and only if) the transaction commits.
        await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{stored.sha256} {stored.id} {int(stored.invert)}"))
        return stored

    async def add_labels(self, labels: Sequence[LabelRequest]) -> LabelOutcome:
        now = self._clock()
        stored: list[Label] = []
        accepted: list[int] = []
        rejected: list[int] = []
        async with self._write() as db:
            for label in labels:
                stored.append(await self._insert_label(db, label, now, None))
                agreed, disagreed = await self._settle(db, label, now)
                accepted += agreed
                rejected += disagreed
        for new in stored:
            self._learn(new.sha256, new.id, new.invert)
        return LabelOutcome(stored, accepted, rejected)

    async def labels(self) -> list[Label]:
        async with self._db() as db:
            rows = await (await db.execute(_CURRENT_LABELS)).fetchall()
        return [_label(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        counts = {"pending": 0, "accepted": 0, "rejected": 0}
        async with self._db() as db:
            for status, count in await (
                await db.execute("SELECT status, COUNT(*) FROM invertornot_corrections GROUP BY status")
            ).fetchall():
                counts[status] = count
            row = await (await db.execute("SELECT COUNT(DISTINCT sha256) FROM invertornot_labels")).fetchone()
        counts["labelled_images"] = row[0] if row is not None else 0
        return counts

    async def image_urls(self) -> dict[str, str]:
        async with self._db() as db:
            rows = await (
                await db.execute(
                    "SELECT sha256, url FROM invertornot_corrections WHERE id IN "
                    "(SELECT MIN(id) FROM invertornot_corrections WHERE url IS NOT NULL GROUP BY sha256)"
                )
            ).fetchall()
        return {sha256: url for sha256, url in rows}
