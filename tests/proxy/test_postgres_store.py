"""The corrections store contract, run against both backends: SQLite files and a real PostgreSQL server
(a fresh database per test). Several stores on one database stand for several instances."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from proxy.corrections import (
    AlreadyDecided,
    CorrectionRequest,
    CorrectionStore,
    LabelRequest,
    ReviewQueueFull,
    SqliteCorrectionStore,
    StoreError,
    UnknownCorrection,
)
from proxy.image_store import MemoryImageStore, sha256_of
from tests.proxy.postgres_server import PostgresServer, postgres_bindir_or_skip

psycopg = pytest.importorskip("psycopg")

from proxy.corrections_postgres import (  # noqa: E402  -- after the optional dependency's check
    DatabaseUnavailable,
    PostgresCorrectionStore,
    is_postgres_url,
)

OpenStore = Callable[..., Awaitable[CorrectionStore]]
PHOTO, DIAGRAM, ICON = (sha256_of(name) for name in (b"photo", b"diagram", b"icon"))
_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(postgres_bindir_or_skip())
    server.start()
    yield server
    server.stop()


def new_postgres_database(server: PostgresServer) -> str:
    name = f"store_{next(_databases)}"
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.url(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database of each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "corrections.db")
    return new_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture
def postgres_database(postgres: PostgresServer) -> str:
    return new_postgres_database(postgres)


@pytest_asyncio.fixture
async def open_store(database: str) -> AsyncIterator[OpenStore]:
    """Opens stores on the test's database: each call is another instance (or a restarted one)."""
    async with store_opener(database) as opener:
        yield opener


@pytest_asyncio.fixture
async def open_postgres_store(postgres_database: str) -> AsyncIterator[OpenStore]:
    async with store_opener(postgres_database) as opener:
        yield opener


@contextlib.asynccontextmanager
async def store_opener(database: str) -> AsyncIterator[OpenStore]:
    opened: list[CorrectionStore] = []

    async def open_one(max_pending: int = 100_000) -> CorrectionStore:
        store: CorrectionStore
        if is_postgres_url(database):
            store = PostgresCorrectionStore(database, MemoryImageStore(), max_pending=max_pending)
        else:
            store = SqliteCorrectionStore(Path(database), MemoryImageStore(), max_pending=max_pending)
        await store.open()
        opened.append(store)
        return store

    try:
        yield open_one
    finally:
        for store in opened:
            await store.close()


def correction(sha256: str, invert: bool, *, trusted: bool = False, client: str = "192.0.2.7") -> CorrectionRequest:
    return CorrectionRequest(
        sha256=sha256,
        invert=invert,
        submitted_by="alice" if trusted else "anonymous",
        trusted=trusted,
        client=client,
        origin="api",
        url=f"https://example.org/{sha256[:8]}.png",
        answered_model="m1",
        answered_p_invert=0.25,
    )


@pytest.mark.asyncio
async def test_trusted_corrections_become_labels_and_anonymous_ones_wait(open_store: OpenStore) -> None:
    store = await open_store()
    pending = await store.submit(correction(PHOTO, True))
    assert (pending.status, pending.trusted, pending.answered_p_invert) == ("pending", False, 0.25)
    assert store.label_of(PHOTO) is None
    assert (await store.submit(correction(PHOTO, True))).id == pending.id, "the same report twice is one report"
    other_client = await store.submit(correction(PHOTO, True, client="192.0.2.8"))
    assert other_client.id != pending.id

    accepted = await store.submit(correction(DIAGRAM, False, trusted=True))
    assert (accepted.status, accepted.decided_by, accepted.invert) == ("accepted", "alice", False)
    assert store.label_of(DIAGRAM) is False and store.labelled_images() == [DIAGRAM]
    assert await store.counts() == {"pending": 2, "accepted": 1, "rejected": 0, "labelled_images": 1}
    (label,) = await store.labels()
    assert (label.sha256, label.invert, label.labelled_by, label.origin, label.correction_id) == (
        DIAGRAM,
        False,
        "alice",
        "correction",
        accepted.id,
    )
    assert await store.image_urls() == {
        PHOTO: f"https://example.org/{PHOTO[:8]}.png",
        DIAGRAM: f"https://example.org/{DIAGRAM[:8]}.png",
    }
    assert await store.get(accepted.id) == accepted and await store.get(10_000) is None

    reopened = await open_store()  # a restarted server sees everything
    assert reopened.label_of(DIAGRAM) is False and reopened.label_of(PHOTO) is None
    assert [c.id for c in await reopened.corrections(status="pending")] == [pending.id, other_client.id]
    assert [c.id for c in await reopened.corrections(after_id=pending.id, limit=1)] == [other_client.id]


@pytest.mark.asyncio
async def test_review_accepts_or_rejects_once_and_settles_the_image(open_store: OpenStore) -> None:
    store = await open_store()
    first = await store.submit(correction(PHOTO, True))
    same = await store.submit(correction(PHOTO, True, client="192.0.2.9"))
    opposite = await store.submit(correction(PHOTO, False, client="192.0.2.10"))
    rejected = await store.submit(correction(ICON, True))
    queue = await store.pending_images(10)
    assert [(image.sha256, image.correction_ids, image.suggested_invert) for image in queue] == [
        (PHOTO, [opposite.id, same.id, first.id], False),
        (ICON, [rejected.id], True),
    ]

    reviewed = await store.review(first.id, accept=True, by="bob")
    assert (reviewed.status, reviewed.decided_by) == ("accepted", "bob")
    assert store.label_of(PHOTO) is True
    assert (await store.get(same.id)).status == "accepted"  # type: ignore[union-attr]
    assert (await store.get(opposite.id)).status == "rejected"  # type: ignore[union-attr]
    assert (await store.review(rejected.id, accept=False, by="bob")).status == "rejected"
    assert store.label_of(ICON) is None
    with pytest.raises(AlreadyDecided):
        await store.review(first.id, accept=False, by="carol")
    with pytest.raises(UnknownCorrection):
        await store.review(10_000, accept=True, by="bob")
    assert await store.pending_images(10) == []


@pytest.mark.asyncio
async def test_labels_settle_pending_corrections_and_the_newest_label_wins(open_store: OpenStore) -> None:
    store = await open_store()
    agree = await store.submit(correction(PHOTO, False))
    disagree = await store.submit(correction(PHOTO, True, client="192.0.2.8"))
    outcome = await store.add_labels(
        [LabelRequest(PHOTO, False, "bob", "label:review"), LabelRequest(DIAGRAM, True, "bob", "label:audit")]
    )
    assert (outcome.accepted, outcome.rejected) == ([agree.id], [disagree.id])
    assert [(label.sha256, label.invert) for label in outcome.labels] == [(PHOTO, False), (DIAGRAM, True)]
    await store.add_labels([LabelRequest(PHOTO, True, "carol", "label:audit")])
    assert store.label_of(PHOTO) is True
    assert [(label.sha256, label.invert, label.labelled_by) for label in await store.labels()] == [
        (DIAGRAM, True, "bob"),
        (PHOTO, True, "carol"),
    ]
    assert (await store.counts())["labelled_images"] == 2


@pytest.mark.asyncio
async def test_the_review_queue_is_bounded(open_store: OpenStore) -> None:
    store = await open_store(max_pending=2)
    await store.submit(correction(PHOTO, True))
    await store.submit(correction(DIAGRAM, True))
    with pytest.raises(ReviewQueueFull):
        await store.submit(correction(ICON, True))
    assert (await store.submit(correction(ICON, True, trusted=True))).status == "accepted", "trusted ones pass"


@pytest.mark.asyncio
async def test_two_instances_on_one_database_never_duplicate_a_report(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    reports = await asyncio.gather(*(store.submit(correction(PHOTO, True)) for store in (a, b, a, b)))
    assert len({report.id for report in reports}) == 1
    assert (await b.counts())["pending"] == 1
    decided = await asyncio.gather(
        a.review(reports[0].id, accept=True, by="bob"),
        b.review(reports[0].id, accept=False, by="carol"),
        return_exceptions=True,
    )
    assert sum(isinstance(result, AlreadyDecided) for result in decided) == 1, "one reviewer wins"


@pytest.mark.asyncio
async def test_postgres_instances_learn_each_others_labels(
    postgres: PostgresServer, open_postgres_store: OpenStore
) -> None:
    # (SQLite stores learn other processes' labels at startup only; with Redis, `proxy.sharing` tells them.)
    a, b = await open_postgres_store(), await open_postgres_store()
    await a.submit(correction(PHOTO, False, trusted=True))
    await eventually(lambda: b.label_of(PHOTO) is False)

    # The database drops every connection (a restart, a failover): requests fail fast with 503, then the
    # store reconnects by itself, and labels stored meanwhile are learnt when it listens again.
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
    outcomes: list[dict[str, int] | int] = []
    for _ in range(2):
        try:
            outcomes.append(await b.counts())
        except DatabaseUnavailable as error:
            outcomes.append(error.status)
    assert isinstance(outcomes[-1], dict) and outcomes[-1]["accepted"] == 1
    c = await open_postgres_store()
    await c.add_labels([LabelRequest(PHOTO, True, "carol", "label:audit"), LabelRequest(ICON, False, "carol", "x")])
    await eventually(lambda: b.label_of(PHOTO) is True and b.label_of(ICON) is False)
    await eventually(lambda: a.label_of(PHOTO) is True)


@pytest.mark.asyncio
async def test_a_newer_postgres_schema_is_refused(open_postgres_store: OpenStore, postgres_database: str) -> None:
    await open_postgres_store()
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute("UPDATE invertornot_schema SET version = version + 1")
    with pytest.raises(StoreError, match="newer version"):
        await open_postgres_store()
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        PostgresCorrectionStore("sqlite:///x.db", MemoryImageStore())


async def eventually(check: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_the_server_keeps_corrections_in_postgresql(
    aiohttp_client: Any, postgres_database: str, tmp_path: Path
) -> None:
    """`invertornot serve --database-url postgresql://...` end to end: a token correction overrides the
    model at once, and a restarted server on the same database still honours it."""
    from classifier.heuristic import SaturationHeuristic
    from proxy.app import create_app
    from tests.proxy.service_support import DIAGRAM, running_upstream, settings

    secret = "s3cret-token-for-tests-0002"
    values = {
        "database_url": postgres_database,
        "api_tokens": (f"alice:{secret}",),
        "correction_images_dir": tmp_path / "images",
    }
    async with running_upstream() as upstream:
        url = upstream.url(f"/img/{DIAGRAM}")
        first = await aiohttp_client(create_app(settings(**values), classifier=SaturationHeuristic()))
        before = await (await first.get("/api/v1/classify", params={"url": url})).json()
        response = await first.post(
            "/api/v1/corrections",
            json={"url": url, "invert": not before["invert"]},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert response.status == 202, await response.text()
        assert (await response.json())["status"] == "accepted"
        after = await (await first.get("/api/v1/classify", params={"url": url})).json()
        assert (after["invert"], after["source"]) == (not before["invert"], "correction")
        await first.close()

        restarted = await aiohttp_client(create_app(settings(**values), classifier=SaturationHeuristic()))
        again = await (await restarted.get(f"/api/v1/verdicts/{before['sha256']}")).json()
        assert (again["invert"], again["source"]) == (not before["invert"], "correction")
