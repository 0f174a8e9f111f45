"""The `invertornot` command end to end, run as a subprocess the way a user runs it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import DATASET_IMAGES, run_cli

CLASSIFY_KEYS = {"input", "invert", "p_invert", "confidence", "sha256", "model"}


def test_classify_prints_one_json_line_per_input(small_set: tuple[Path, Path]) -> None:
    _, images = small_set
    paths = sorted(images.iterdir())[:4]
    result = run_cli("classify", *map(str, paths))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == [str(path) for path in paths]
    for line in lines:
        assert set(line) == CLASSIFY_KEYS
        assert isinstance(line["invert"], bool)
        assert 0.0 <= line["p_invert"] <= 1.0
        assert line["model"].startswith("effnet-lite0")


def test_classify_reports_errors_and_exits_1(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    good = next(DATASET_IMAGES.glob("*.png"))
    result = run_cli("classify", str(good), str(garbage), str(tmp_path / "missing.png"), check=False)
    assert result.returncode == 1
    first, second, third = (json.loads(line) for line in result.stdout.splitlines())
    assert "invert" in first
    assert second == {"input": str(garbage), "error": {"code": "undecodable", "message": second["error"]["message"]}}
    assert third["error"]["code"] == "not_found"


@pytest.mark.asyncio
async def test_classify_fetches_urls(aiohttp_server, tmp_path: Path) -> None:
    image = next(DATASET_IMAGES.glob("*.jpg"))

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=image.read_bytes(), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/photo.jpg", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/photo.jpg"

    allowed = await asyncio.to_thread(run_cli, "classify", "--allow-private-networks", url)
    (line,) = (json.loads(text) for text in allowed.stdout.splitlines())
    assert line["input"] == url and "invert" in line

    refused = await asyncio.to_thread(run_cli, "classify", url, check=False)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "address_refused"


def test_eval_json_and_report(small_set: tuple[Path, Path], small_model_dir: Path, tmp_path: Path) -> None:
    labels, images = small_set
    report = tmp_path / "report.html"
    result = run_cli(
        "eval",
        "--labels",
        str(labels),
        "--images",
        str(images),
        "--model",
        str(small_model_dir),
        "--json",
        "--report",
        str(report),
    )
    summary = json.loads(result.stdout)
    assert {"n", "accuracy", "false_invert_rate", "missed_invert_rate", "auc", "model", "heuristic"} <= set(summary)
    assert set(summary["heuristic"]) == {"accuracy", "false_invert_rate", "missed_invert_rate"}
    # The model was trained on exactly these images, and every training image is fit.
    assert summary["accuracy"] == 1.0 and summary["false_invert_rate"] == 0.0
    assert summary["heuristic"]["accuracy"] < 1.0
    page = report.read_text()
    assert "Confusion matrix" in page and "<svg" in page


def test_eval_skips_ambiguous_rows_and_shows_mistakes(small_set, small_model_dir: Path, tmp_path: Path) -> None:
    labels, images = small_set
    rows = labels.read_text().splitlines()
    header, body = rows[0], rows[1:]
    columns = header.split(",")
    label_at = columns.index("label")
    flipped = []
    for index, row in enumerate(body):
        cells = row.split(",")
        if index < 3:
            cells[label_at] = "1" if cells[label_at] == "0" else "0"  # deliberately wrong labels
        elif index < 5:
            cells[label_at] = ""  # ambiguous: skipped
        flipped.append(",".join(cells))
    edited = tmp_path / "labels.csv"
    edited.write_text("\n".join([header, *flipped]) + "\n")
    report = tmp_path / "report.html"
    result = run_cli(
        "eval",
        "--labels",
        str(edited),
        "--images",
        str(images),
        "--model",
        str(small_model_dir),
        "--json",
        "--report",
        str(report),
    )
    summary = json.loads(result.stdout)
    assert summary["n"] == len(body) - 2
    assert summary["accuracy"] == pytest.approx((len(body) - 5) / (len(body) - 2), abs=1e-3)
    page = report.read_text()
    assert page.count('class="card"') == 3
    assert 'class="inv"' in page and 'class="dim"' in page


def test_unusable_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("classify", "--model", str(tmp_path), str(next(DATASET_IMAGES.iterdir())), check=False)
    assert result.returncode == 2
    assert "not a model directory" in result.stderr
