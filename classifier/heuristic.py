"""gwern.net's saturation rule: the baseline every model must beat, and the model-free fallback.

An image flattened onto white is inverted when its mean HSL saturation is at most 0.09: greyscale
diagrams and text qualify, colourful photos do not. It scores about 0.73 on the development set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

from classifier.decode import ImageError, decode_image
from classifier.features import WHITE_RGB, composite, hsl_saturation_mean, thumbnail_rgba
from classifier.verdict import Verdict

SATURATION_THRESHOLD = 0.09
HEURISTIC_VERSION = "saturation-heuristic-0.09"


def saturation_p_invert(image: Image.Image) -> float:
    """A pseudo-probability of "invert": 1 at zero saturation, 0.5 at the threshold, 0 at twice it."""
    saturation = hsl_saturation_mean(composite(thumbnail_rgba(image), WHITE_RGB))
    return max(0.0, min(1.0, 1.0 - saturation / (2.0 * SATURATION_THRESHOLD)))


class SaturationHeuristic:
    """An `ImageClassifier` with no model at all (for comparisons and as a fallback)."""

    version = HEURISTIC_VERSION

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        results: list[Verdict | ImageError] = []
        for blob in blobs:
            sha256 = hashlib.sha256(blob).hexdigest()
            try:
                p_invert = saturation_p_invert(decode_image(blob))
            except ImageError as error:
                results.append(error)
                continue
            invert = p_invert >= 0.5
            results.append(
                Verdict(
                    invert=invert,
                    p_invert=round(p_invert, 4),
                    confidence=round(p_invert if invert else 1.0 - p_invert, 4),
                    sha256=sha256,
                    model=self.version,
                    source="heuristic",
                )
            )
        return results
