"""The answer the classifier gives for one image, and the interface every classifier offers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from classifier.decode import ImageError

VerdictSource = Literal["model", "correction", "page-markup", "heuristic"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to invert one image in dark mode.

    `p_invert` is the model's probability of "invert"; `confidence` is the probability of the
    answer actually given (so it is >= 0.5 only when the threshold is 0.5). `model` is the
    version of the model that answered, so caches never mix answers of two models.
    """

    invert: bool
    p_invert: float
    confidence: float
    sha256: str
    model: str
    source: VerdictSource = "model"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ImageClassifier(Protocol):
    """What the service needs from a classifier: a version and a batch call on encoded bytes.

    `classify_bytes` is CPU-bound and thread-safe; callers run it in an executor. Each input
    yields a `Verdict` or the `ImageError` that explains why it could not be judged.
    """

    @property
    def version(self) -> str: ...

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]: ...
