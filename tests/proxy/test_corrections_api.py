"""Corrections, review, labelling queues and model reload over a real server running the real default model,
fetching from a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.model import DEFAULT_MODEL_DIR, InvertModel
from classifier.verdict import ImageClassifier
from proxy.app import create_app
from proxy.corrections_routes import STORE
from tests.proxy.service_support import DIAGRAM, PHOTO, Upstream, image_bytes, running_upstream, settings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
SECRET = "s3cret-token-for-tests-0001"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as server:
        yield server


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path, default_model: ImageClassifier) -> MakeClient:
    async def make(classifier: ImageClassifier | None = default_model, **overrides: Any) -> Client:
        values = {"database_url": f"sqlite:///{tmp_path}/corrections.db", "api_tokens": (f"alice:{SECRET}",)}
        app = create_app(settings(**{**values, **overrides}), classifier=classifier)
        return await aiohttp_client(app)

    return make


async def classify(client: Client, url: str) -> dict[str, Any]:
    response = await client.get("/api/v1/classify", params={"url": url})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def correct(client: Client, body: dict[str, Any], *, token: bool, status: int = 202) -> dict[str, Any]:
    response = await client.post("/api/v1/corrections", json=body, headers=AUTH if token else {})
    assert response.status == status, await response.text()
    return dict(await response.json())


@pytest.mark.asyncio
async def test_token_corrections_apply_at_once_and_anonymous_ones_change_nothing(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = await make_client()
    url = upstream.url(f"/img/{DIAGRAM}")
    before = await classify(client, url)
    assert (before["invert"], before["source"]) == (True, "model")

    anonymous = await correct(client, {"url": url, "invert": False, "note": "a photo?"}, token=False)
    assert anonymous["status"] == "pending" and anonymous["sha256"] == before["sha256"]
    assert await classify(client, url) == {**before, "cached": True}

    trusted = await correct(client, {"url": url, "invert": False}, token=True)
    assert trusted["status"] == "accepted" and trusted["id"] != anonymous["id"]
    settled = await client.app[STORE].get(anonymous["id"])
    assert settled is not None and (settled.status, settled.decided_by) == ("accepted", "alice")
    after = await classify(client, url)  # the cached model answer is not served any more
    assert (after["invert"], after["p_invert"], after["confidence"], after["source"]) == (False, 0.0, 1.0, "correction")
    by_hash = await (await client.get(f"/api/v1/verdicts/{before['sha256']}")).json()
    assert (by_hash["invert"], by_hash["source"]) == (False, "correction")
    upload = await client.post(
        "/api/v1/classify/image", data=image_bytes(DIAGRAM), headers={"Content-Type": "image/png"}
    )
    assert (await upload.json())["source"] == "correction"
    sha1 = hashlib.sha1(image_bytes(DIAGRAM)).hexdigest()
    assert await (await client.post("/api/sha1", json=[sha1])).json() == [{"invert": 0, "sha1": sha1, "error": ""}]
    # The image was kept by hash, so it stays trainable whatever happens to the URL.
    stored = await client.get(f"/api/v1/label/images/{before['sha256']}", headers=AUTH)
    assert stored.status == 200 and await stored.read() == image_bytes(DIAGRAM)
    assert stored.headers["Content-Type"] == "image/png"


@pytest.mark.asyncio
async def test_tokens_bodies_and_images_are_checked(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    url = upstream.url(f"/img/{PHOTO}")
    wrong = await client.post(
        "/api/v1/corrections", json={"url": url, "invert": True}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status == 401 and (await wrong.json())["error"]["code"] == "invalid_token"
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/api/v1/corrections", "/api/v1/label/queue"):
        assert (await client.get(path)).status == 401
    assert (await client.post("/api/v1/admin/reload")).status == 401
    assert (await client.post("/api/v1/corrections/1/review", json={"decision": "accept"})).status == 401

    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": url}, "invalid_correction"),
        ({"invert": True}, "missing_image"),
        ({"sha256": "xyz", "invert": True}, "invalid_sha256"),
        ({"url": url, "sha256": "0" * 64, "invert": True}, "sha256_mismatch"),
        ({"url": url, "invert": True, "note": "x" * 1001}, "invalid_correction"),
    ]
    for body, code in cases:
        assert (await correct(client, body, token=False, status=400))["error"]["code"] == code
    unknown = await correct(client, {"sha256": "0" * 64, "invert": True}, token=False, status=404)
    assert unknown["error"]["code"] == "unknown_image"
    corrupt = await correct(client, {"url": upstream.url("/corrupt.png"), "invert": True}, token=False, status=422)
    assert corrupt["error"]["code"] in ("undecodable", "truncated")
    missing = await correct(client, {"url": upstream.url("/img/missing.png"), "invert": True}, token=True, status=404)
    assert missing["error"]["code"] == "not_found"
    # A trusted reporter may pin an image by hash alone (not trainable, but answered at once).
    pinned = await correct(client, {"sha256": "ab" * 32, "invert": True}, token=True)
    assert pinned["status"] == "accepted"
    assert (await (await client.get(f"/api/v1/verdicts/{'ab' * 32}")).json())["source"] == "correction"


@pytest.mark.asyncio
async def test_review_accepts_or_rejects_pending_corrections(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    photo, diagram = upstream.url(f"/img/{PHOTO}"), upstream.url(f"/img/{DIAGRAM}")
    to_accept = await correct(client, {"url": photo, "invert": True}, token=False)
    to_reject = await correct(client, {"url": diagram, "invert": False}, token=False)
    listed = await (await client.get("/api/v1/corrections", headers=AUTH)).json()
    assert [c["id"] for c in listed["corrections"]] == [to_accept["id"], to_reject["id"]]
    first = listed["corrections"][0]
    assert (first["status"], first["submitted_by"], first["answered_p_invert"] < 0.5) == ("pending", "anonymous", True)
    assert first["url"] == photo and "client" not in first

    accept = await client.post(
        f"/api/v1/corrections/{to_accept['id']}/review", json={"decision": "accept"}, headers=AUTH
    )
    assert accept.status == 200
    decided = await accept.json()
    assert (decided["status"], decided["decided_by"]) == ("accepted", "alice") and decided["decided_at"].endswith("Z")
    reject = await client.post(
        f"/api/v1/corrections/{to_reject['id']}/review", json={"decision": "reject"}, headers=AUTH
    )
    assert (await reject.json())["status"] == "rejected"
    again = await client.post(
        f"/api/v1/corrections/{to_reject['id']}/review", json={"decision": "accept"}, headers=AUTH
    )
    assert again.status == 409 and (await again.json())["error"]["code"] == "already_decided"
    missing = await client.post("/api/v1/corrections/12345/review", json={"decision": "accept"}, headers=AUTH)
    assert missing.status == 404

    assert ((await classify(client, photo))["invert"], (await classify(client, photo))["source"]) == (
        True,
        "correction",
    )
    assert (await classify(client, diagram))["source"] == "model"
    everything = await (await client.get("/api/v1/corrections?status=all&limit=1", headers=AUTH)).json()
    assert len(everything["corrections"]) == 1 and everything["next_after"] == to_accept["id"]
    assert (await (await client.get("/api/v1/corrections", headers=AUTH)).json())["corrections"] == []


@pytest.mark.asyncio
async def test_anonymous_corrections_are_rate_limited_and_compat_reports_join_the_queue(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = await make_client(correction_rate_limit_per_minute=1, correction_rate_limit_burst=2)
    urls = [upstream.url(f"/variant/{n}.png") for n in range(3)]
    assert await (await client.post("/api/correction", json=urls[:1])).json() is None  # compat: spends one
    await correct(client, {"url": urls[1], "invert": True}, token=False)
    limited = await client.post("/api/v1/corrections", json={"url": urls[2], "invert": True})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await client.post("/api/correction", json=urls[2:])).status == 429
    await correct(client, {"url": urls[2], "invert": True}, token=True)  # token holders are not limited

    store = client.app[STORE]
    report = (await store.corrections(status="pending"))[0]
    answered = await classify(client, urls[0])
    # "This verdict is wrong": the report asks for the opposite of what the service answered.
    assert (report.origin, report.url, report.invert) == ("compat", urls[0], not answered["invert"])
    assert await store.image(report.sha256) is not None


@pytest.mark.asyncio
async def test_labelling_queues_serve_stored_images_and_store_decisions(
    make_client: MakeClient, upstream: Upstream
) -> None:
    client = await make_client()
    reported = await correct(client, {"url": upstream.url(f"/img/{PHOTO}"), "invert": True}, token=False)
    review = await (await client.get("/api/v1/label/queue?queue=review", headers=AUTH)).json()
    assert review["pending"] == 1 and [item["sha256"] for item in review["items"]] == [reported["sha256"]]
    assert review["items"][0]["suggested_invert"] is True

    urls = [upstream.url(f"/variant/{n}.png") for n in range(8)]
    verdicts = [await classify(client, url) for url in urls]
    uncertain = await (await client.get("/api/v1/label/queue?queue=uncertain&limit=4", headers=AUTH)).json()
    threshold = uncertain["threshold"]
    distances = [abs(item["p_invert"] - threshold) for item in uncertain["items"]]
    assert len(distances) == 4 and distances == sorted(distances)
    assert max(distances) <= sorted(abs(v["p_invert"] - threshold) for v in verdicts)[3]
    image = await client.get(uncertain["items"][0]["image"], headers=AUTH)
    assert image.status == 200 and sha256(await image.read()) == uncertain["items"][0]["sha256"]

    decisions = [{"sha256": item["sha256"], "invert": False} for item in uncertain["items"]]
    decisions.append({"sha256": reported["sha256"], "invert": False})  # disagrees with the report
    response = await client.post("/api/v1/labels", json={"queue": "uncertain", "labels": decisions}, headers=AUTH)
    assert await response.json() == {"stored": 5, "accepted": [], "rejected": [reported["id"]]}
    relabelled = await classify(
        client, next(u for u, v in zip(urls, verdicts, strict=True) if v["sha256"] == decisions[0]["sha256"])
    )
    assert (relabelled["invert"], relabelled["source"]) == (False, "correction")
    again = await (await client.get("/api/v1/label/queue?queue=uncertain&limit=64", headers=AUTH)).json()
    assert not {item["sha256"] for item in again["items"]} & {d["sha256"] for d in decisions}
    audit = await (await client.get("/api/v1/label/queue?queue=audit&limit=64", headers=AUTH)).json()
    assert {d["sha256"] for d in decisions} <= {item["sha256"] for item in audit["items"]}
    assert (await (await client.get("/api/v1/label/queue?queue=review", headers=AUTH)).json())["items"] == []
    bad = await client.post("/api/v1/labels", json={"labels": [{"sha256": "x", "invert": True}]}, headers=AUTH)
    assert bad.status == 400


def derived_model(source: Path, target: Path, *, pin: dict[str, bool], version: str) -> None:
    """A copy of a model with other overrides and version: what a retrain produces, without training."""
    shutil.copytree(source, target)
    model = InvertModel.load(target)
    model.overrides = pin
    model.manifest = dataclasses.replace(model.manifest, version=version)
    model.save(target, backbone_onnx=target / "backbone.onnx")


@pytest.mark.asyncio
async def test_sighup_and_the_endpoint_reload_the_model_without_dropping_requests(
    make_client: MakeClient, upstream: Upstream, tmp_path: Path
) -> None:
    served = tmp_path / "served-model"
    shutil.copytree(DEFAULT_MODEL_DIR, served)
    client = await make_client(classifier=None, model=served)
    photo = upstream.url(f"/img/{PHOTO}")
    before = await classify(client, photo)
    assert before["invert"] is False

    staged = tmp_path / "retrained"
    derived_model(DEFAULT_MODEL_DIR, staged, pin={before["sha256"]: True}, version="retrained-1")
    shutil.rmtree(served)
    shutil.copytree(staged, served)
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN), "no SIGHUP handler installed"
    busy = [asyncio.create_task(classify(client, upstream.url(f"/variant/{n}.png"))) for n in range(12)]
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(200):
        if (await (await client.get("/healthz")).json())["model"] == "retrained-1":
            break
        await asyncio.sleep(0.05)
    answers = await asyncio.gather(*busy)  # every request made during the reload was answered
    assert len(answers) == 12
    after = await classify(client, photo)
    assert (after["model"], after["invert"], after["cached"]) == ("retrained-1", True, False)

    # A broken model directory is refused; the current model keeps answering.
    (served / "forest.npz").write_bytes(b"garbage")
    failed = await client.post("/api/v1/admin/reload", headers=AUTH)
    assert failed.status == 503 and (await failed.json())["error"]["code"] == "reload_failed"
    assert (await classify(client, photo))["model"] == "retrained-1"
    shutil.copyfile(staged / "forest.npz", served / "forest.npz")
    same = await client.post("/api/v1/admin/reload", headers=AUTH)
    assert await same.json() == {"model": "retrained-1", "previous": "retrained-1", "changed": False}
