"""The corrections store on real SQLite files: trust levels, review, labels, durability across reopening,
and the content-addressed image store; plus the token and settings plumbing around them."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from proxy.cli import build_parser
from proxy.corrections import (
    AlreadyDecided,
    CorrectionRequest,
    CorrectionStore,
    LabelRequest,
    ReviewQueueFull,
    SqliteCorrectionStore,
    UnknownCorrection,
    create_store,
    parse_database_url,
)
from proxy.image_store import DirectoryImageStore, sha256_of
from proxy.settings import Settings
from proxy.tokens import TokenRegistry, bearer_secret, parse_token
from tests.proxy.service_support import DIAGRAM, PHOTO, image_bytes

TOKEN = "reviewer:0123456789abcdef0123"


def correction(sha256: str, invert: bool, *, trusted: bool = False, client: str = "192.0.2.7") -> CorrectionRequest:
    return CorrectionRequest(
        sha256=sha256,
        invert=invert,
        submitted_by="alice" if trusted else "anonymous",
        trusted=trusted,
        client=client,
        origin="api",
        url=f"https://example.org/{sha256[:8]}.png",
    )


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[CorrectionStore]:
    opened = create_store(f"sqlite:///{tmp_path}/corrections.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.mark.asyncio
async def test_trusted_corrections_become_labels_and_anonymous_ones_wait(
    store: CorrectionStore, tmp_path: Path
) -> None:
    photo, diagram = sha256_of(image_bytes(PHOTO)), sha256_of(image_bytes(DIAGRAM))
    pending = await store.submit(correction(photo, True))
    assert pending.status == "pending" and store.label_of(photo) is None
    again = await store.submit(correction(photo, True))
    assert again.id == pending.id  # the same report twice is one report
    other_client = await store.submit(correction(photo, True, client="192.0.2.8"))
    assert other_client.id != pending.id

    accepted = await store.submit(correction(diagram, False, trusted=True))
    assert (accepted.status, accepted.decided_by) == ("accepted", "alice")
    assert store.label_of(diagram) is False
    assert (await store.counts()) == {"pending": 2, "accepted": 1, "rejected": 0, "labelled_images": 1}
    (label,) = await store.labels()
    assert (label.sha256, label.invert, label.labelled_by, label.origin, label.correction_id) == (
        diagram,
        False,
        "alice",
        "correction",
        accepted.id,
    )
    # Everything is on disk: a fresh store on the same file (a restarted server) sees the same state.
    reopened = create_store(f"sqlite:///{tmp_path}/corrections.db")
    await reopened.open()
    try:
        assert reopened.label_of(diagram) is False and reopened.label_of(photo) is None
        assert [c.id for c in await reopened.corrections(status="pending")] == [pending.id, other_client.id]
    finally:
        await reopened.close()


@pytest.mark.asyncio
async def test_review_accepts_or_rejects_once(store: CorrectionStore) -> None:
    photo, diagram = sha256_of(image_bytes(PHOTO)), sha256_of(image_bytes(DIAGRAM))
    first = await store.submit(correction(photo, True))
    second = await store.submit(correction(diagram, False))
    (queue_first, queue_second) = await store.pending_images(10)
    assert (queue_first.sha256, queue_first.correction_ids, queue_first.suggested_invert) == (photo, [first.id], True)
    assert queue_second.url == "https://example.org/" + diagram[:8] + ".png"

    accepted = await store.review(first.id, accept=True, by="bob")
    assert (accepted.status, accepted.decided_by) == ("accepted", "bob") and accepted.decided_at is not None
    assert store.label_of(photo) is True
    rejected = await store.review(second.id, accept=False, by="bob")
    assert rejected.status == "rejected" and store.label_of(diagram) is None
    with pytest.raises(AlreadyDecided):
        await store.review(first.id, accept=False, by="carol")
    with pytest.raises(UnknownCorrection):
        await store.review(999, accept=True, by="bob")
    assert await store.pending_images(10) == []


@pytest.mark.asyncio
async def test_labels_settle_pending_corrections_and_the_newest_label_wins(store: CorrectionStore) -> None:
    photo = sha256_of(image_bytes(PHOTO))
    agrees = await store.submit(correction(photo, False, client="192.0.2.1"))
    disagrees = await store.submit(correction(photo, True, client="192.0.2.2"))
    outcome = await store.add_labels([LabelRequest(photo, False, "dana", "label:review")])
    assert (outcome.accepted, outcome.rejected) == ([agrees.id], [disagrees.id])
    assert (await store.get(disagrees.id)).decided_by == "dana"  # type: ignore[union-attr]
    await store.add_labels([LabelRequest(photo, True, "erin", "label:audit")])
    assert store.label_of(photo) is True
    (current,) = await store.labels()
    assert (current.invert, current.labelled_by, current.origin) == (True, "erin", "label:audit")


@pytest.mark.asyncio
async def test_a_trusted_correction_or_an_accepted_review_settles_the_other_reports(store: CorrectionStore) -> None:
    photo, diagram = sha256_of(image_bytes(PHOTO)), sha256_of(image_bytes(DIAGRAM))
    same = await store.submit(correction(photo, False, client="192.0.2.1"))
    opposite = await store.submit(correction(photo, True, client="192.0.2.2"))
    await store.submit(correction(photo, False, trusted=True))
    assert [(await store.get(c.id)).status for c in (same, opposite)] == ["accepted", "rejected"]  # type: ignore[union-attr]

    first = await store.submit(correction(diagram, True, client="192.0.2.1"))
    second = await store.submit(correction(diagram, True, client="192.0.2.2"))
    third = await store.submit(correction(diagram, False, client="192.0.2.3"))
    await store.review(first.id, accept=True, by="bob")
    decided = [await store.get(c.id) for c in (second, third)]
    assert [(c.status, c.decided_by) for c in decided if c] == [("accepted", "bob"), ("rejected", "bob")]


@pytest.mark.asyncio
async def test_the_review_queue_is_bounded(tmp_path: Path) -> None:
    bounded = SqliteCorrectionStore(tmp_path / "small.db", DirectoryImageStore(tmp_path / "images"), max_pending=2)
    await bounded.open()
    try:
        await bounded.submit(correction("a" * 64, True))
        await bounded.submit(correction("b" * 64, True))
        with pytest.raises(ReviewQueueFull):
            await bounded.submit(correction("c" * 64, True))
        assert (await bounded.submit(correction("c" * 64, True, trusted=True))).status == "accepted"
    finally:
        await bounded.close()


@pytest.mark.asyncio
async def test_database_is_wal_with_full_sync_and_images_are_stored_by_hash(tmp_path: Path) -> None:
    opened = create_store(f"sqlite:///{tmp_path}/db/corrections.db")
    await opened.open()
    try:
        data = image_bytes(DIAGRAM)
        sha256 = await opened.store_image(data)
        assert sha256 == sha256_of(data) and await opened.has_image(sha256)
        assert await opened.image(sha256) == data and await opened.image("0" * 64) is None
        assert await opened.store_image(data) == sha256  # idempotent
        stored = tmp_path / "db" / "corrections-images" / sha256[:2] / sha256
        assert stored.read_bytes() == data
        assert not list(stored.parent.glob("*.tmp"))
    finally:
        await opened.close()
    with sqlite3.connect(tmp_path / "db" / "corrections.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_database_urls() -> None:
    assert parse_database_url("sqlite:///./invertornot.db").path == Path("./invertornot.db")
    assert parse_database_url("sqlite:////var/lib/x.db").path == Path("/var/lib/x.db")
    assert parse_database_url("sqlite://").path is None
    assert parse_database_url("sqlite:///data/x.db").default_images_dir() == Path("data/x-images")
    postgres = parse_database_url("postgresql://db/x")
    assert postgres.scheme == "postgresql" and postgres.url == "postgresql://db/x"
    for bad in ("mysql://x", "invertornot.db", "sqlite:/x.db"):
        with pytest.raises(ValueError):
            parse_database_url(bad)


def test_tokens_are_named_and_compared_by_digest() -> None:
    registry = TokenRegistry([TOKEN, "fedcba9876543210fedcba"])
    assert registry.identify("0123456789abcdef0123") == "reviewer"
    assert (registry.identify("fedcba9876543210fedcba") or "").startswith("token-")
    assert registry.identify("0123456789abcdef012") is None
    assert "0123456789abcdef0123" not in repr(registry.tokens)
    with pytest.raises(ValueError):
        parse_token("short")
    with pytest.raises(ValueError):
        TokenRegistry(["a:0123456789abcdef0123", "a:0123456789abcdef9999"])
    assert bearer_secret("Bearer  abc ") == "abc" and bearer_secret(None) is None
    with pytest.raises(ValueError):
        bearer_secret("Basic dXNlcg==")


def test_api_tokens_from_repeated_flags_and_the_environment() -> None:
    args = build_parser().parse_args(
        ["serve", "--api-token", TOKEN, "--api-token", "b:fedcba9876543210fedcba", "--database-url", "sqlite://"]
    )
    settings = Settings.from_args(args, environ={})
    assert settings.api_tokens == (TOKEN, "b:fedcba9876543210fedcba") and settings.database_url == "sqlite://"
    assert TOKEN not in repr(settings)
    from_env = Settings.from_env({"INVERTORNOT_API_TOKENS": f"{TOKEN}, b:fedcba9876543210fedcba"})
    assert from_env.api_tokens == settings.api_tokens
    with pytest.raises(ValueError, match="api_tokens"):
        Settings(api_tokens=("tooshort",))
    with pytest.raises(ValueError, match="database_url"):
        Settings(database_url="mysql://db/corrections")


def test_postgresql_urls_select_the_postgres_store(tmp_path: Path) -> None:
    from proxy.corrections import create_store
    from proxy.corrections_postgres import PostgresCorrectionStore

    url = "postgresql://invertornot@127.0.0.1:5432/corrections"
    store = create_store(url, images_dir=tmp_path / "images")
    assert isinstance(store, PostgresCorrectionStore) and store.url == url
    assert Settings(database_url=url).database_url == url
    assert isinstance(create_store("sqlite://"), SqliteCorrectionStore)
