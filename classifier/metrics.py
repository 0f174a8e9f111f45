"""Binary metrics in this project's terms: "false invert" (a don't-invert image inverted) is the costly error."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    accuracy: float
    false_invert_rate: float  # share of "don't invert" images predicted invert
    missed_invert_rate: float  # share of "invert" images predicted don't invert
    auc: float | None
    threshold: float
    confusion: dict[str, int]  # tp, fp, tn, fn with "invert" as the positive class

    def to_json(self) -> dict[str, Any]:
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def binary_metrics(
    p_invert: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], threshold: float
) -> BinaryMetrics:
    predicted = np.asarray(p_invert) >= threshold
    return metrics_from_predictions(predicted, labels, threshold=threshold, scores=p_invert)


def metrics_from_predictions(
    predicted: NDArray[np.bool_],
    labels: NDArray[np.integer[Any]],
    *,
    threshold: float = 0.5,
    scores: NDArray[np.floating[Any]] | None = None,
) -> BinaryMetrics:
    actual = np.asarray(labels) == 1
    predicted = np.asarray(predicted, dtype=bool)
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    tn = int((~predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    auc = None
    if scores is not None and 0 < actual.sum() < actual.size:
        auc = float(roc_auc_score(actual, scores))
    return BinaryMetrics(
        n=int(actual.size),
        accuracy=(tp + tn) / max(actual.size, 1),
        false_invert_rate=fp / max(fp + tn, 1),
        missed_invert_rate=fn / max(tp + fn, 1),
        auc=auc,
        threshold=float(threshold),
        confusion={"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    )


def threshold_for_false_invert_rate(
    p_invert: NDArray[np.floating[Any]], labels: NDArray[np.integer[Any]], target: float
) -> float:
    """The lowest threshold whose false-invert rate is at most `target` (never below 0.5).

    Lowest, because among thresholds that keep photos safe it inverts the most diagrams.
    """
    scores = np.asarray(p_invert, dtype=np.float64)
    negatives = np.sort(scores[np.asarray(labels) == 0])[::-1]
    if negatives.size == 0:
        return 0.5
    allowed = int(np.floor(target * negatives.size))  # how many negatives may score >= threshold
    if allowed >= negatives.size:
        return 0.5
    # Just above the (allowed+1)-th highest negative score: exactly `allowed` negatives remain above.
    threshold = float(np.nextafter(negatives[allowed], np.inf))
    return max(0.5, min(threshold, 1.0))
