"""Classifier throughput: encoded bytes in memory -> verdicts, on the dataset mix and on full-size images.

Prints images/s for a few ways of spending the cores, the saturation heuristic as the no-model baseline
(same process, same inputs), and the peak RSS. Usage: python bench/classify.py [--seconds S] [--model DIR]
"""

from __future__ import annotations

import argparse
import copy as copy_module
import io
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from PIL import Image

from classifier.dataset import DEFAULT_DATASET_DIR, read_labels
from classifier.decode import decode_image
from classifier.features import colour_features
from classifier.heuristic import SaturationHeuristic
from classifier.model import InvertModel


def dataset_mix(labels: Path | None = None, images: Path | None = None) -> list[bytes]:
    """Encoded images of a labelled folder (default: the development set, which the shipped model was fit to)."""
    items = read_labels(labels or DEFAULT_DATASET_DIR / "labels.csv", images or DEFAULT_DATASET_DIR / "images")
    return [item.path.read_bytes() for item in items]


def full_size_mix(count: int = 24) -> list[bytes]:
    """1-3 MP JPEG photos and large PNG diagrams, made by upscaling dataset images."""
    images = read_labels(DEFAULT_DATASET_DIR / "labels.csv", DEFAULT_DATASET_DIR / "images")
    photos = [i for i in images if i.category in ("photo", "painting")][: count // 2]
    diagrams = [i for i in images if i.category in ("diagram", "plot")][: count // 2]
    blobs = []
    for index, item in enumerate(photos + diagrams):
        image = Image.open(item.path)
        megapixels = 1.0 + 2.0 * (index % 5) / 4  # 1 to 3 MP
        scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
        big = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        if item in photos:
            big.convert("RGB").save(buffer, format="JPEG", quality=90)
        else:
            big.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


def cpu_ms_per_image(classify: Callable[[Sequence[bytes]], object], blobs: list[bytes], *, batch: int) -> float:
    """Process CPU time per image, all threads included: unlike wall time, barely moved by other load.

    2 cores / (CPU time per image) is the throughput an idle 2-core machine reaches with perfect overlap.
    """
    batches = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]
    classify(batches[0])
    start = time.process_time()
    for chunk in batches:
        classify(chunk)
    return (time.process_time() - start) / len(blobs) * 1000


def measure(
    classify: Callable[[Sequence[bytes]], object], blobs: list[bytes], *, batch: int, workers: int, seconds: float
) -> float:
    """Images per second, keeping `workers` batches in flight until `seconds` have passed."""
    batches = [blobs[i : i + batch] for i in range(0, len(blobs), batch)]
    classify(batches[0])  # warm-up
    done = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        while time.perf_counter() - start < seconds:
            for count in pool.map(lambda b: (classify(b), len(b))[1], batches):
                done += count
            if done >= len(blobs) and time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def screened_share(model: InvertModel, blobs: list[bytes]) -> float:
    """The share of `blobs` the model's colour screen answers (the backbone never sees them)."""
    assert model.screen is not None
    colours = np.stack([colour_features(decode_image(blob)) for blob in blobs])
    return float(model.screen.decide(colours)[1].mean())


def unscreened(model: InvertModel) -> InvertModel:
    """The same model with its colour screen switched off: every image goes through the backbone."""
    copy = copy_module.copy(model)
    copy.screen = None
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum time per measurement")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels.csv of another image mix, e.g. a labelled batch the model has not seen (with --images)",
    )
    parser.add_argument("--images", type=Path, default=None, help="images folder for --labels")
    args = parser.parse_args()

    # The shipped model was fit to the dataset, so its colour screen answers nearly all of those images; on
    # images it has never seen it answers fewer (see the README): benchmark such a set with --labels/--images.
    name = "dataset (<= 384 px)" if args.labels is None else f"{args.labels.parent.name} (unseen mix)"
    mixes = {name: dataset_mix(args.labels, args.images), "full size (1-3 MP)": full_size_mix()}
    cores = os.cpu_count() or 1
    print(f"{cores} cores; {name} {len(mixes[name])} images, full-size mix 24 images")
    heuristic = SaturationHeuristic()
    configurations = [("1 caller, ORT on all cores", None, 1), ("2 callers, ORT 1 thread each", 1, 2)]
    for name, blobs in mixes.items():
        baseline = measure(heuristic.classify_bytes, blobs, batch=16, workers=cores, seconds=args.seconds / 2)
        print(f"\n{name}: saturation heuristic (decode + statistics only) {baseline:7.1f} img/s")
        model = InvertModel.load(args.model, threads=1)
        if model.screen is not None:
            print(f"  colour screen answers {screened_share(model, blobs):.0%} of these images without the backbone")
        for label, threads, workers in configurations:
            model = InvertModel.load(args.model, threads=threads)
            variants = [("", model)] if model.screen is None else [("", model), (" (no screen)", unscreened(model))]
            for suffix, variant in variants:
                rate = measure(variant.classify_bytes, blobs, batch=16, workers=workers, seconds=args.seconds)
                name_ = f"{label}{suffix}"
                print(f"  model, batch 16, {name_:44s} {rate:7.1f} img/s  ({rate / baseline:.2f}x heuristic)")
        model = InvertModel.load(args.model, threads=1)
        heuristic_ms = cpu_ms_per_image(heuristic.classify_bytes, blobs, batch=16)
        variants = [("", model)] if model.screen is None else [("", model), (" (no screen)", unscreened(model))]
        for suffix, variant in variants:
            cpu_ms = cpu_ms_per_image(variant.classify_bytes, blobs, batch=16)
            print(
                f"  CPU time per image{suffix}: model {cpu_ms:.2f} ms, heuristic {heuristic_ms:.2f} ms"
                f" -> {1000 * cores / cpu_ms:.0f} img/s on {cores} idle cores with full overlap"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
