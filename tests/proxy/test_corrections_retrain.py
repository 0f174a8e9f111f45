"""The retraining loop end to end: corrections in the database -> `invertornot train --database-url` fits the
dataset and every accepted correction (and only those) -> a reload serves the new model, never the old model's
cached answers -> `invertornot export-labels` releases the merged set."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from classifier.dataset import read_labels, training_set_hash
from classifier.model import DEFAULT_MODEL_DIR, InvertModel
from classifier.verdict import Verdict
from proxy.app import create_app
from proxy.corrections import CorrectionRequest, LabelRequest, create_store
from proxy.labelset import CORRECTIONS_PACKAGE
from tests.conftest import DATASET_IMAGES, DATASET_LABELS, run_cli
from tests.proxy.service_support import running_upstream, settings

SECRET = "retrain-secret-token-0001"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_rows() -> list[dict[str, str]]:
    with DATASET_LABELS.open(newline="") as handle:
        return list(csv.DictReader(handle))


def request(sha: str, invert: bool, *, trusted: bool, url: str | None = None) -> CorrectionRequest:
    by = "alice" if trusted else "anonymous"
    return CorrectionRequest(sha, invert, by, trusted, "192.0.2.1", "api", url=url)


async def fill_database(database: Path, relabel: Path, relabel_to: bool, add: Path, add_as: bool) -> None:
    store = create_store(f"sqlite:///{database}")
    await store.open()
    try:
        for path in (relabel, add):
            await store.store_image(path.read_bytes())
        await store.submit(request(sha256(relabel), relabel_to, trusted=True))
        await store.submit(request(sha256(add), add_as, trusted=True, url="https://example.org/added.png"))
        # Never merged: a pending report, a rejected one and a label whose image was never stored.
        outsider = next(path for path in sorted(DATASET_IMAGES.iterdir()) if path.name not in (relabel.name, add.name))
        await store.store_image(outsider.read_bytes())
        await store.submit(request(sha256(outsider), True, trusted=False))
        rejected = await store.submit(request(sha256(outsider), False, trusted=False))
        await store.review(rejected.id, accept=False, by="alice")
        await store.add_labels([LabelRequest("cd" * 32, True, "alice", "label:audit")])
    finally:
        await store.close()


@pytest.mark.slow
def test_retrain_fits_corrections_and_a_reload_serves_the_new_model(
    small_set: tuple[Path, Path], tmp_path: Path, default_model: InvertModel
) -> None:
    labels_csv, images_dir = small_set
    small = read_labels(labels_csv, images_dir)
    relabel = small[0]
    in_small = {item.file for item in small}
    # An image from outside the small set that the shipped model gets right: the correction says the opposite.
    row = next(
        r
        for r in dataset_rows()
        if r["label"] and r["file"] not in in_small and r["source_package"] == "stellarium-data"
    )
    added = DATASET_IMAGES / row["file"]
    added_label = row["label"] != "1"
    (before,) = default_model.classify_bytes([added.read_bytes()])
    assert isinstance(before, Verdict) and before.invert != added_label
    database = tmp_path / "corrections.db"
    asyncio.run(fill_database(database, relabel.path, not relabel.label, added, added_label))

    out = tmp_path / "retrained"
    result = run_cli(
        "train", "--labels", str(labels_csv), "--images", str(images_dir), "--database-url", f"sqlite:///{database}",
        "--out", str(out),
    )  # fmt: skip
    assert "1 added and 1 relabelled by people (0 confirmed, 1 without a stored image)" in result.stderr
    retrained = InvertModel.load(out)
    assert retrained.version != default_model.version
    assert retrained.manifest.n_training_images == len(small) + 1
    assert retrained.manifest.training_set_hash != training_set_hash((sha256(i.path), i.label) for i in small)
    assert CORRECTIONS_PACKAGE in retrained.manifest.training["source_packages"]
    # 100% fit, people's labels included.
    expected = {sha256(item.path): bool(item.label) for item in small}
    expected[sha256(relabel.path)] = not relabel.label
    expected[sha256(added)] = added_label
    blobs = [item.path.read_bytes() for item in small] + [added.read_bytes()]
    answers = {v.sha256: v.invert for v in retrained.classify_bytes(blobs) if isinstance(v, Verdict)}
    assert answers == expected

    asyncio.run(reload_and_check(tmp_path, out, added, added_label, retrained.version))

    export = tmp_path / "export"
    printed = run_cli(
        "export-labels", "--out", str(export), "--database-url", f"sqlite:///{database}",
        "--labels", str(labels_csv), "--images", str(images_dir),
    ).stdout  # fmt: skip
    assert f"wrote {len(small) + 1} rows" in printed
    with (export / "labels.csv").open(newline="") as handle:
        exported = {row["file"]: row for row in csv.DictReader(handle)}
    assert len(exported) == len(list((export / "images").iterdir())) == len(small) + 1
    assert exported[relabel.file]["label"] == str(int(not relabel.label))
    assert exported[relabel.file]["label_source"] == "person"
    new = next(row for row in exported.values() if row["source_package"] == CORRECTIONS_PACKAGE)
    assert (new["label"], new["source_path"], new["width"]) == (
        str(int(added_label)),
        "https://example.org/added.png",
        row["width"],
    )
    assert (export / "images" / new["file"]).read_bytes() == added.read_bytes()
    assert "alice" not in (export / "labels.csv").read_text()  # who labelled is not released
    refused = run_cli("export-labels", "--out", str(export), "--database-url", f"sqlite:///{database}", check=False)
    assert refused.returncode == 2 and "not empty" in refused.stderr


async def reload_and_check(tmp_path: Path, retrained: Path, image: Path, label: bool, version: str) -> None:
    """A server on the shipped model answers and caches; the retrained model is put in place and reloaded."""
    served = tmp_path / "served"
    shutil.copytree(DEFAULT_MODEL_DIR, served)
    app = create_app(settings(model=served, database_url="sqlite://", api_tokens=(SECRET,)))
    server = TestServer(app, host="127.0.0.1")
    async with running_upstream() as upstream, TestClient[web.Request, web.Application](server) as client:
        url = upstream.url(f"/img/{image.name}")
        old = await _classify(client, url)
        assert old["invert"] != label and (await _classify(client, url))["cached"] is True
        shutil.rmtree(served)
        shutil.copytree(retrained, served)
        reloaded = await client.post("/api/v1/admin/reload", headers={"Authorization": f"Bearer {SECRET}"})
        assert await reloaded.json() == {"model": version, "previous": old["model"], "changed": True}
        new = await _classify(client, url)
        assert (new["model"], new["invert"], new["cached"], new["source"]) == (version, label, False, "model")
        by_hash = await client.get(f"/api/v1/verdicts/{old['sha256']}")
        assert (await by_hash.json())["model"] == version


async def _classify(client: TestClient[web.Request, web.Application], url: str) -> dict[str, Any]:
    response = await client.get("/api/v1/classify", params={"url": url})
    assert response.status == 200, await response.text()
    return dict(await response.json())
