"""Score a model (and the saturation heuristic) on a labelled set; optionally write an HTML report."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from classifier.dataset import LabelledImage
from classifier.decode import decode_image
from classifier.heuristic import saturation_p_invert
from classifier.metrics import BinaryMetrics, binary_metrics, metrics_from_predictions
from classifier.model import InvertModel, sha256_hex

INVERT_FILTER = "grayscale(50%) invert(100%) brightness(95%) hue-rotate(180deg)"
DIM_FILTER = "grayscale(50%)"
DARK_PAGE = "#121212"
GALLERY_LIMIT = 120


@dataclass
class Evaluation:
    images: Sequence[LabelledImage]
    labels: NDArray[np.int64]
    p_invert: NDArray[np.float64]
    predicted: NDArray[np.bool_]
    heuristic_p: NDArray[np.float64]
    model_version: str
    threshold: float
    overall: BinaryMetrics = field(init=False)
    heuristic: BinaryMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.overall = metrics_from_predictions(
            self.predicted, self.labels, threshold=self.threshold, scores=self.p_invert
        )
        self.heuristic = binary_metrics(self.heuristic_p, self.labels, 0.5)

    def breakdown(self, key: Callable[[LabelledImage], str]) -> dict[str, BinaryMetrics]:
        buckets: dict[str, list[int]] = {}
        for index, image in enumerate(self.images):
            buckets.setdefault(key(image), []).append(index)
        return {
            name: metrics_from_predictions(self.predicted[idx], self.labels[idx], threshold=self.threshold)
            for name, idx in sorted(buckets.items())
        }

    def to_json(self) -> dict[str, Any]:
        """The `invertornot eval --json` object."""
        overall = self.overall
        return {
            "n": overall.n,
            "accuracy": round(overall.accuracy, 4),
            "false_invert_rate": round(overall.false_invert_rate, 4),
            "missed_invert_rate": round(overall.missed_invert_rate, 4),
            "auc": None if overall.auc is None else round(overall.auc, 4),
            "model": self.model_version,
            "threshold": round(self.threshold, 4),
            "confusion": overall.confusion,
            "heuristic": {
                "accuracy": round(self.heuristic.accuracy, 4),
                "false_invert_rate": round(self.heuristic.false_invert_rate, 4),
                "missed_invert_rate": round(self.heuristic.missed_invert_rate, 4),
            },
        }


def evaluate(
    model: InvertModel,
    images: Sequence[LabelledImage],
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    p_invert: list[float] = []
    predicted: list[bool] = []
    heuristic: list[float] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        blobs = [item.path.read_bytes() for item in batch]
        decoded = [decode_image(blob) for blob in blobs]
        verdicts = model.predict(decoded, [sha256_hex(blob) for blob in blobs])
        p_invert.extend(verdict.p_invert for verdict in verdicts)
        predicted.extend(verdict.invert for verdict in verdicts)
        heuristic.extend(saturation_p_invert(image) for image in decoded)
        if progress is not None:
            progress(len(batch))
    return Evaluation(
        images=images,
        labels=np.asarray([item.label for item in images], dtype=np.int64),
        p_invert=np.asarray(p_invert),
        predicted=np.asarray(predicted, dtype=bool),
        heuristic_p=np.asarray(heuristic),
        model_version=model.version,
        threshold=model.threshold,
    )


# -- HTML report -------------------------------------------------------------------------------------


def _thumbnail_data_uri(path: Path, side: int = 160) -> str:
    image = decode_image(path.read_bytes(), max_side=side)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _metrics_table(title: str, rows: dict[str, BinaryMetrics]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m.n}</td><td>{m.accuracy:.3f}</td>"
        f"<td>{m.false_invert_rate:.3f}</td><td>{m.missed_invert_rate:.3f}</td></tr>"
        for name, m in rows.items()
    )
    return (
        f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>n</th><th>accuracy</th>"
        f"<th>false-invert rate</th><th>missed-invert rate</th></tr>{body}</table>"
    )


def _roc_svg(labels: NDArray[np.int64], scores: NDArray[np.float64], heuristic: NDArray[np.float64]) -> str:
    if labels.min() == labels.max():
        return "<p>ROC needs both classes.</p>"
    size = 260

    def polyline(values: NDArray[np.float64], colour: str) -> str:
        fpr, tpr, _ = roc_curve(labels, values)
        points = " ".join(f"{20 + x * size:.1f},{20 + (1 - y) * size:.1f}" for x, y in zip(fpr, tpr, strict=True))
        return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'

    return (
        f'<svg width="{size + 40}" height="{size + 40}" role="img" aria-label="ROC curve">'
        f'<rect x="20" y="20" width="{size}" height="{size}" fill="none" stroke="#888"/>'
        f'<line x1="20" y1="{20 + size}" x2="{20 + size}" y2="20" stroke="#555" stroke-dasharray="4"/>'
        f"{polyline(scores, '#4ea1ff')}{polyline(heuristic, '#ff9f43')}"
        f'<text x="24" y="{size + 36}" fill="#ccc" font-size="12">false-invert rate →</text></svg>'
        '<p><span style="color:#4ea1ff">■ model</span> &nbsp; '
        '<span style="color:#ff9f43">■ saturation heuristic</span></p>'
    )


def write_report(evaluation: Evaluation, path: Path) -> None:
    """A self-contained HTML page: metrics, confusion matrix, ROC and a gallery of mistakes."""
    overall = evaluation.overall
    c = overall.confusion
    wrong = np.flatnonzero(evaluation.predicted != (evaluation.labels == 1))
    # Worst first: confident mistakes teach the most.
    wrong = wrong[np.argsort(-np.abs(evaluation.p_invert[wrong] - evaluation.threshold))][:GALLERY_LIMIT]
    cards = []
    for index in wrong:
        item = evaluation.images[int(index)]
        uri = _thumbnail_data_uri(item.path)
        expected = "invert" if item.label == 1 else "don't invert"
        cards.append(
            '<figure class="card">'
            f'<div class="trio"><img src="{uri}" alt="original"><img src="{uri}" alt="inverted" class="inv">'
            f'<img src="{uri}" alt="dimmed" class="dim"></div>'
            f"<figcaption><b>{html.escape(item.file)}</b> · {html.escape(item.category)} · "
            f"{html.escape(item.source_package)}<br>label: {expected}; p_invert {evaluation.p_invert[index]:.3f}"
            "</figcaption></figure>"
        )
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>InvertOrNot evaluation: {
        html.escape(evaluation.model_version)
    }</title>
<style>
body {{ background: {DARK_PAGE}; color: #ddd; font: 14px/1.4 system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ border: 1px solid #444; padding: 4px 8px; }}
.card {{ display: inline-block; margin: 8px; width: 520px; vertical-align: top; }}
.trio img {{ width: 160px; height: 160px; object-fit: contain; margin-right: 4px; background: {DARK_PAGE}; }}
.inv {{ filter: {INVERT_FILTER}; }} .dim {{ filter: {DIM_FILTER}; }}
</style></head><body>
<h1>Evaluation of model {html.escape(evaluation.model_version)}</h1>
<p>{overall.n} labelled images; threshold {evaluation.threshold:.3f}.
Accuracy <b>{overall.accuracy:.3f}</b>, false-invert rate <b>{overall.false_invert_rate:.3f}</b>,
missed-invert rate {overall.missed_invert_rate:.3f}, AUC {overall.auc or float("nan"):.3f}.
Saturation heuristic: accuracy {evaluation.heuristic.accuracy:.3f},
false-invert rate {evaluation.heuristic.false_invert_rate:.3f}.</p>
<h2>Confusion matrix</h2>
<table><tr><th></th><th>predicted invert</th><th>predicted don't invert</th></tr>
<tr><th>label invert</th><td>{c["tp"]}</td><td>{c["fn"]}</td></tr>
<tr><th>label don't invert</th><td>{c["fp"]}</td><td>{c["tn"]}</td></tr></table>
<h2>ROC</h2>{_roc_svg(evaluation.labels, evaluation.p_invert, evaluation.heuristic_p)}
{_metrics_table("By category", evaluation.breakdown(lambda i: i.category or "?"))}
{_metrics_table("By source", evaluation.breakdown(lambda i: i.source_package))}
{
        _metrics_table(
            "Transparent vs opaque",
            evaluation.breakdown(lambda i: "transparent" if i.alpha_fraction >= 0.02 else "opaque"),
        )
    }
<h2>Mistakes ({len(wrong)} shown): original / inverted / dimmed, on the dark page</h2>
{"".join(cards) or "<p>None.</p>"}
</body></html>
"""
    path.write_text(document, encoding="utf-8")
