"""`InvertModel`: backbone + colour features + forest + threshold + exact-hash overrides + manifest.

A model is a directory of plain data files (no pickles) with `manifest.json` describing them. Loading
checks the manifest against the code and the files, so a stale or mismatched artifact fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops

from classifier.backbones import Backbone, BackboneLoadError, BackboneSpecError, load_backbone
from classifier.decode import DEFAULT_MAX_PIXELS, ImageError, decode_image
from classifier.features import FEATURE_NAMES, colour_features
from classifier.forest import PackedForest
from classifier.screen import SCREEN_FILE, ColourScreen, combine
from classifier.verdict import Verdict

MODEL_FORMAT = 1
MANIFEST_FILE = "manifest.json"
FOREST_FILE = "forest.npz"
PROBE_FILE = "probe.npz"
OVERRIDES_FILE = "overrides.json"
BACKBONE_ONNX_FILE = "backbone.onnx"
#: The model shipped inside the package: what `invertornot` uses when no --model is given.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


class ModelError(RuntimeError):
    """A model directory that is missing, corrupt or does not match this code."""


@dataclass(frozen=True)
class Manifest:
    format: int
    version: str
    backbone: str
    embedding_dim: int
    embedding_inputs: str  # "probe": one linear-probe score goes into the forest; "raw": every dimension
    feature_names: list[str]
    n_features: int
    threshold: float
    sklearn_version: str
    training_set_hash: str
    n_training_images: int
    files: dict[str, str]  # file name -> sha256
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    #: The colour screen's bounds (`{"below", "above", ...}`, see classifier/screen.py); empty: no screen.
    screen: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def backbone_input(image: Image.Image, size: int) -> Image.Image:
    """The size x size RGB image the backbone sees: the whole picture, squashed, drawn over white.

    White, because the backbone is asked what the picture depicts, as drawn on its authoring canvas
    (how it will look on the dark page is the colour statistics' job). Resizing first, in premultiplied
    alpha, makes compositing a cheap integer add on a small image: over white, premultiplied
    colour c*a becomes c*a + 255*(1 - a), i.e. rgb + (255 - alpha).
    """
    if image.size != (size, size):
        mode = "RGBa" if image.mode in ("RGBA", "LA", "PA", "P") else "RGB"
        image = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if image.mode == "RGB":
        return image
    if image.mode != "RGBa":
        image = image.convert("RGBa")
    red, green, blue, alpha = image.split()
    uncovered = ImageChops.invert(alpha)  # 255 - alpha: how much white shows through
    # ImageChops.add saturates at 255, which is the min(..., 255) the formula needs.
    return Image.merge("RGB", [ImageChops.add(channel, uncovered) for channel in (red, green, blue)])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def part_columns(parts: Sequence[int]) -> list[slice]:
    """The column slices of consecutive embedding parts of the given sizes (`Backbone.parts`)."""
    ends = np.cumsum(parts).tolist()
    return [slice(end - size, end) for size, end in zip(parts, ends, strict=True)]


@dataclass(frozen=True)
class LinearProbe:
    """Logistic regressions on standardised embeddings, kept as arrays: for each part (a group of
    consecutive columns, `Backbone.parts`), p = sigmoid(((e - mean) / scale) . w + b) over its columns.

    The embedding enters the forest through these scores, one per part. Measured with package-grouped
    CV, a forest on all 1280 embedding dimensions learns to recognise source packages and generalises
    worse than colour statistics alone; a strongly regularised linear probe carries the content signal
    without that.
    """

    mean: NDArray[np.float32]
    scale: NDArray[np.float32]
    weights: NDArray[np.float32]
    bias: NDArray[np.float32]  # one per part
    parts: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = {self.mean.shape, self.scale.shape, self.weights.shape}
        if sizes != {(sum(self.parts),)} or self.bias.shape != (len(self.parts),) or min(self.parts, default=0) < 1:
            raise ValueError(
                f"probe arrays {sorted(sizes)} / bias {self.bias.shape} do not fit parts {list(self.parts)}"
            )

    def score(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """p for each embedding (rows) and part (columns)."""
        standard = (embeddings - self.mean) / self.scale
        logits = np.empty((len(embeddings), len(self.parts)), dtype=np.float32)
        for index, columns in enumerate(part_columns(self.parts)):
            logits[:, index] = standard[:, columns] @ self.weights[columns] + self.bias[index]
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"mean": self.mean, "scale": self.scale, "weights": self.weights}
        if len(self.parts) == 1:  # the original single-probe file, readable by earlier versions
            arrays["bias"] = np.float32(self.bias[0])
        else:
            arrays.update(bias=self.bias, parts=np.asarray(self.parts, dtype=np.int64))
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> LinearProbe:
        with np.load(path, allow_pickle=False) as arrays:
            mean, scale, weights = arrays["mean"], arrays["scale"], arrays["weights"]
            bias = np.atleast_1d(arrays["bias"]).astype(np.float32)
            parts = tuple(int(size) for size in arrays["parts"]) if "parts" in arrays else (int(weights.size),)
        return cls(mean, scale, weights, bias, parts)


class FeatureExtractor:
    """Image -> the forest's input row: [embedding part, colour features]."""

    def __init__(self, backbone: Backbone, probe: LinearProbe | None):
        self.backbone = backbone
        self.probe = probe

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        size = self.backbone.input_size
        return np.asarray(self.backbone.embed([backbone_input(image, size) for image in images]), dtype=np.float32)

    def combine(self, embeddings: NDArray[np.float32], colours: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.combine_with(self.probe, embeddings, colours)

    @staticmethod
    def combine_with(
        probe: LinearProbe | None, embeddings: NDArray[np.float32], colours: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        embedded = embeddings if probe is None else probe.score(embeddings)
        return np.hstack([embedded, colours]).astype(np.float32)


class InvertModel:
    """The classifier: `classify_bytes` for encoded images, `predict` for decoded ones."""

    def __init__(
        self,
        manifest: Manifest,
        forest: PackedForest,
        extractor: FeatureExtractor,
        overrides: dict[str, bool],
        *,
        screen: ColourScreen | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.manifest = manifest
        self.forest = forest
        self.extractor = extractor
        self.overrides = overrides
        self.screen = screen
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self._answered = {"screen": 0, "backbone": 0}

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    def verdict(self, p_invert: float, sha256: str) -> Verdict:
        invert = p_invert >= self.threshold
        return Verdict(
            invert=invert,
            p_invert=round(float(p_invert), 4),
            confidence=round(float(p_invert if invert else 1.0 - p_invert), 4),
            sha256=sha256,
            model=self.version,
            source="model",
        )

    def override(self, sha256: str) -> Verdict | None:
        """The pinned answer for an exact image, if the training set had to pin it."""
        pinned = self.overrides.get(sha256)
        if pinned is None:
            return None
        return Verdict(
            invert=pinned,
            p_invert=1.0 if pinned else 0.0,
            confidence=1.0,
            sha256=sha256,
            model=self.version,
            source="model",
        )

    def p_invert(self, images: Sequence[Image.Image]) -> NDArray[np.float64]:
        """p_invert per image: the colour screen's where it decides, else the full model's (backbone included)."""
        if not images:
            return np.zeros(0)
        colours = np.stack([colour_features(image) for image in images])
        p_invert = np.empty(len(images))
        todo = np.arange(len(images))
        if self.screen is not None:
            screen_p, decided = self.screen.decide(colours)
            p_invert[decided] = screen_p[decided]
            todo = np.flatnonzero(~decided)
        if todo.size:
            embeddings = self.extractor.embed([images[int(index)] for index in todo])
            p_invert[todo] = self.forest.predict_proba(self.extractor.combine(embeddings, colours[todo]))
        with self._lock:  # batches run on several threads
            self._answered["screen"] += len(images) - int(todo.size)
            self._answered["backbone"] += int(todo.size)
        return p_invert

    def answered_by(self) -> dict[str, int]:
        """How many images (overrides aside) this model answered with its colour screen / with the backbone."""
        with self._lock:
            return dict(self._answered)

    def p_invert_from_features(
        self, embeddings: NDArray[np.float32], colours: NDArray[np.float32]
    ) -> NDArray[np.float64]:
        """What `p_invert` gives for images with these precomputed embeddings and colour features."""
        p_invert = self.forest.predict_proba(self.extractor.combine(embeddings, colours))
        if self.screen is None:
            return p_invert
        return combine(self.screen.forest.predict_proba(colours), p_invert, self.screen)

    def predict(self, images: Sequence[Image.Image], sha256s: Sequence[str]) -> list[Verdict]:
        """Verdicts for decoded images; `sha256s` are the hashes of their encoded bytes."""
        if len(images) != len(sha256s):
            raise ValueError("one sha256 per image is needed")
        results: list[Verdict | None] = [self.override(sha256) for sha256 in sha256s]
        todo = [index for index, result in enumerate(results) if result is None]
        probabilities = self.p_invert([images[index] for index in todo])
        for index, probability in zip(todo, probabilities, strict=True):
            results[index] = self.verdict(float(probability), sha256s[index])
        return [result for result in results if result is not None]

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        """Decode and classify encoded images; undecodable ones yield their `ImageError`."""
        results: list[Verdict | ImageError | None] = []
        images: list[Image.Image] = []
        positions: list[int] = []
        hashes: list[str] = []
        for blob in blobs:
            sha256 = sha256_hex(blob)
            pinned = self.override(sha256)
            if pinned is not None:
                results.append(pinned)
                continue
            try:
                image = decode_image(blob, max_pixels=self.max_pixels)
            except ImageError as error:
                results.append(error)
                continue
            positions.append(len(results))
            results.append(None)
            images.append(image)
            hashes.append(sha256)
        for position, probability, sha256 in zip(positions, self.p_invert(images), hashes, strict=True):
            results[position] = self.verdict(float(probability), sha256)
        return [result for result in results if result is not None]

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: Path, *, backbone_onnx: Path | None = None) -> None:
        """Write the model files and a manifest listing their hashes (`manifest.files` is recomputed)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.forest.save(directory / FOREST_FILE)
        files = [FOREST_FILE, OVERRIDES_FILE]
        (directory / OVERRIDES_FILE).write_text(json.dumps(self.overrides, indent=0, sort_keys=True) + "\n")
        if self.extractor.probe is not None:
            self.extractor.probe.save(directory / PROBE_FILE)
            files.append(PROBE_FILE)
        if self.screen is not None:
            self.screen.save(directory)
            files.append(SCREEN_FILE)
        if backbone_onnx is not None:
            target = directory / BACKBONE_ONNX_FILE
            if backbone_onnx.resolve() != target.resolve():
                target.write_bytes(backbone_onnx.read_bytes())
            files.append(BACKBONE_ONNX_FILE)
        hashes = {name: sha256_hex((directory / name).read_bytes()) for name in sorted(files)}
        screen = {} if self.screen is None else {**self.manifest.screen, **self.screen.to_json()}
        manifest = Manifest(**{**asdict(self.manifest), "files": hashes, "screen": screen})
        (directory / MANIFEST_FILE).write_text(manifest.to_json())
        self.manifest = manifest

    @classmethod
    def load(cls, directory: Path | None = None, *, threads: int | None = None, **options: Any) -> InvertModel:
        """Load and verify a model directory (the shipped default model when `directory` is None)."""
        directory = DEFAULT_MODEL_DIR if directory is None else Path(directory)
        manifest = read_manifest(directory)
        for name, expected in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise ModelError(f"{directory}: {name} is listed in the manifest but missing")
            if sha256_hex(path.read_bytes()) != expected:
                raise ModelError(f"{directory}: {name} does not match the manifest's sha256 (corrupt or replaced)")
        forest = PackedForest.load(directory / FOREST_FILE)
        try:
            probe = LinearProbe.load(directory / PROBE_FILE) if PROBE_FILE in manifest.files else None
        except (KeyError, ValueError) as error:
            raise ModelError(f"{directory}: unusable {PROBE_FILE}: {error}") from error
        onnx_path = directory / BACKBONE_ONNX_FILE if BACKBONE_ONNX_FILE in manifest.files else None
        try:
            backbone = load_backbone(manifest.backbone, onnx_path=onnx_path, threads=threads)
        except (BackboneLoadError, BackboneSpecError) as error:
            raise ModelError(f"{directory}: cannot load backbone {manifest.backbone!r}: {error}") from error
        screen = load_screen(directory, manifest)
        check_layout(manifest, backbone.parts, probe, forest)
        overrides = json.loads((directory / OVERRIDES_FILE).read_text())
        return cls(manifest, forest, FeatureExtractor(backbone, probe), overrides, screen=screen, **options)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ModelError(f"{directory} is not a model directory: {MANIFEST_FILE} is missing") from error
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable manifest: {error}") from error
    if raw.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path}: model format {raw.get('format')!r}; this code reads format {MODEL_FORMAT}")
    try:
        return Manifest(**raw)
    except TypeError as error:
        raise ModelError(f"{path}: manifest fields do not match this code: {error}") from error


def load_screen(directory: Path, manifest: Manifest) -> ColourScreen | None:
    """The colour screen the manifest names, checked against this code's features and the threshold."""
    if not manifest.screen:
        if SCREEN_FILE in manifest.files:
            raise ModelError(f"{directory}: {SCREEN_FILE} is listed but the manifest gives no screen bounds")
        return None
    if SCREEN_FILE not in manifest.files:
        raise ModelError(f"{directory}: the manifest gives screen bounds but does not list {SCREEN_FILE}")
    try:
        screen = ColourScreen.load(directory, manifest.screen)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{directory}: unusable colour screen: {error}") from error
    if screen.forest.n_features != len(FEATURE_NAMES):
        raise ModelError(
            f"{directory}: the colour screen expects {screen.forest.n_features} features; "
            f"this code computes {len(FEATURE_NAMES)}"
        )
    # Outside these bounds a screened answer could contradict `p_invert >= threshold`.
    if not screen.below < manifest.threshold <= screen.above:
        raise ModelError(
            f"{directory}: screen bounds {screen.below} / {screen.above} "
            f"do not bracket the threshold {manifest.threshold}"
        )
    return screen


def check_layout(
    manifest: Manifest,
    backbone_parts: Sequence[int],
    probe: LinearProbe | None,
    forest: PackedForest,
) -> None:
    """Refuse a model whose forest was trained on a different feature layout than this code computes."""
    backbone_dim = sum(backbone_parts)
    if list(manifest.feature_names) != list(FEATURE_NAMES):
        raise ModelError(
            "the model was trained on different colour features than this code computes "
            f"({len(manifest.feature_names)} vs {len(FEATURE_NAMES)} names); retrain it"
        )
    if backbone_dim != manifest.embedding_dim:
        raise ModelError(
            f"backbone {manifest.backbone!r} gives {backbone_dim}-d embeddings, "
            f"the manifest says {manifest.embedding_dim}"
        )
    embedded = manifest.embedding_dim
    if manifest.embedding_inputs == "probe":
        if probe is None or probe.weights.shape != (manifest.embedding_dim,):
            raise ModelError("the manifest asks for a linear probe of the embedding; probe.npz is missing or wrong")
        if probe.parts != tuple(backbone_parts):
            raise ModelError(
                f"the probe scores embedding parts {list(probe.parts)}; backbone {manifest.backbone!r} "
                f"gives {list(backbone_parts)}"
            )
        embedded = len(probe.parts)
    elif manifest.embedding_inputs != "raw":
        raise ModelError(f"unknown embedding_inputs {manifest.embedding_inputs!r}")
    if forest.n_features != embedded + len(FEATURE_NAMES) or manifest.n_features != forest.n_features:
        raise ModelError(
            f"the forest expects {forest.n_features} inputs; backbone and features give {embedded + len(FEATURE_NAMES)}"
        )
