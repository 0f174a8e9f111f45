"""How fast each way of running the EfficientNet-Lite0 backbone is, and how close it stays to torch fp32.

Run from the repository root: `.venv/bin/python bench/backbones.py [--sizes 224 160] [--threads 2]`.
For every input size it times, at a fixed batch size and thread count, on already-preprocessed batches:
  * torch fp32 (contiguous) and torch fp32 channels_last;
  * ONNX Runtime fp32 (the export the server uses);
  * ONNX Runtime dynamic int8 and static int8 (QDQ, per-channel; calibrated on other dataset images),
    plain and with 7-bit weights (reduce_range) plus the stem and head convs kept in fp32;
and prints images/s with the cosine similarity of each variant's embeddings to torch fp32 at that size.
Then CLIP ViT-B-32 (random weights) in fp32 and cast to bf16, and the cost of `prepare_batch`.
Prints a table; asserts nothing. Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script, not a package: make `classifier` importable

from classifier import backbones  # noqa: E402

if TYPE_CHECKING:
    import torch

IMAGES = ROOT / "classifier" / "dataset" / "images"
Row = tuple[str, str, str, str, str, str]
Runner = Callable[[np.ndarray], np.ndarray]


def dataset_images(count: int, offset: int) -> list[Image.Image]:
    """`count` dataset images spread over the whole (sorted) set, alpha composited onto white."""
    files = sorted(IMAGES.iterdir())
    step = max(1, len(files) // count)
    chosen = files[offset::step][:count]
    images = []
    for path in chosen:
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        images.append(Image.alpha_composite(white, rgba).convert("RGB"))
    return images


def best_rates(runners: dict[str, Runner], pixels: np.ndarray, batch: int, repeat: int) -> dict[str, float]:
    """Best images/s of each runner over `repeat` passes through `pixels` in chunks of `batch`.

    The passes are interleaved (one pass of every runner, then the next round) and the best is kept, so that
    a burst of load from other processes on a shared machine does not land on one variant only.
    """
    best = dict.fromkeys(runners, 0.0)
    for _ in range(repeat):
        for name, run in runners.items():
            started = time.perf_counter()
            for start in range(0, len(pixels), batch):
                run(pixels[start : start + batch])
            best[name] = max(best[name], len(pixels) / (time.perf_counter() - started))
    return best


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(path), sess_options=backbones._session_options(threads), providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {backbones.ONNX_INPUT: x})[0]


def quantize_variants(src: Path, calibration: np.ndarray, batch: int, workdir: Path) -> dict[str, Path]:
    """Dynamic and static int8 versions of `src`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(
                {backbones.ONNX_INPUT: calibration[i : i + batch]} for i in range(0, len(calibration), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    convs = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
    out = {"ORT dynamic int8": workdir / "dynamic.onnx"}
    quantize_dynamic(str(prepared), str(out["ORT dynamic int8"]), weight_type=QuantType.QUInt8)
    common = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
    }
    out["ORT static int8"] = workdir / "static.onnx"
    quantize_static(str(prepared), str(out["ORT static int8"]), Batches(), **common)
    # Without VNNI, u8 x s8 products are summed pairwise into int16 and can saturate; 7-bit weights avoid it.
    out["ORT static int8 rr+fp32 ends"] = workdir / "static_rr.onnx"
    quantize_static(
        str(prepared),
        str(out["ORT static int8 rr+fp32 ends"]),
        Batches(),
        reduce_range=True,
        nodes_to_exclude=[convs[0], convs[-1]],
        **common,
    )
    return out


def table_row(size: int, name: str, rate: float, batch: int, features: np.ndarray, reference: np.ndarray) -> Row:
    cos = cosines(features, reference)
    ms = 1000 * batch / rate
    return (str(size), name, f"{rate:.1f}", f"{ms:.1f}", f"{cos.mean():.4f}", f"{cos.min():.4f}")


def torch_runner(model: torch.nn.Module, memory_format: torch.memory_format) -> Runner:
    import torch

    model.to(memory_format=memory_format)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).contiguous(memory_format=memory_format)).numpy()

    return run


def bench_effnet(sizes: Sequence[int], threads: int, batch: int, repeat: int, count: int, int8: bool) -> list[Row]:
    import torch

    evaluation = dataset_images(count, offset=0)
    calibration = dataset_images(count, offset=1)  # disjoint from the evaluation images
    rows: list[Row] = []
    for size in sizes:
        spec = backbones.parse_spec(f"effnet-lite0@{size}").spec
        pixels = backbones.prepare_batch(evaluation, size)
        # One model per layout: .to(channels_last) converts the weights in place.
        runners = {
            "torch fp32": torch_runner(backbones.build_efficientnet_lite0(input_size=size), torch.contiguous_format),
            "torch channels_last": torch_runner(
                backbones.build_efficientnet_lite0(input_size=size), torch.channels_last
            ),
        }
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            backbones.export_onnx(spec, onnx_path)
            variants = {"ORT fp32": onnx_path}
            if int8:
                calibration_pixels = backbones.prepare_batch(calibration, size)
                variants |= quantize_variants(onnx_path, calibration_pixels, batch, Path(tmp))
            runners |= {name: ort_runner(path, threads) for name, path in variants.items()}
        outputs = {name: run(pixels) for name, run in runners.items()}  # also warms every runner up
        rates = best_rates(runners, pixels, batch, repeat)
        reference = outputs["torch fp32"]
        rows += [table_row(size, name, rates[name], batch, outputs[name], reference) for name in runners]
        print(f"  done {size} px", file=sys.stderr, flush=True)
    return rows


def bench_clip(batch: int, repeat: int, count: int) -> list[Row]:
    import open_clip
    import torch

    torch.manual_seed(0)
    fp32, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    pixels = backbones.prepare_batch(dataset_images(count, offset=2), 224)

    def runner(model: Any, dtype: torch.dtype) -> Runner:  # an open_clip CLIP, untyped
        model.eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model.encode_image(torch.from_numpy(x).to(dtype), normalize=True).float().numpy()

        return run

    runners = {
        "CLIP ViT-B-32 random fp32": runner(fp32, torch.float32),
        "CLIP ViT-B-32 random bf16 (model cast)": runner(bf16, torch.bfloat16),
    }
    outputs = {name: run(pixels) for name, run in runners.items()}
    rates = best_rates(runners, pixels, batch, repeat)
    reference = outputs["CLIP ViT-B-32 random fp32"]
    return [table_row(224, name, rates[name], batch, outputs[name], reference) for name in runners]


def bench_prepare(count: int) -> str:
    images = dataset_images(count, offset=3)
    backbones.prepare_batch(images[:4], 224)
    started = time.perf_counter()
    backbones.prepare_batch(images, 224)
    ms = 1000 * (time.perf_counter() - started) / count
    return f"prepare_batch (dataset images, <= 384 px, to 224 px): {ms:.2f} ms/img"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192, 160, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=64, help="evaluation images (and as many for calibration)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    parser.add_argument("--no-int8", action="store_true", help="skip the (slow to calibrate) int8 variants")
    parser.add_argument("--no-clip", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    logging.basicConfig(level=logging.ERROR)  # open_clip and the quantiser log at INFO/WARNING per model
    ort.set_default_logger_severity(3)  # and ORT warns about every initializer it folds away
    torch.set_num_threads(args.threads)
    cpu = "bf16 native" if backbones.cpu_supports_bf16() else "no native bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{os.cpu_count()} CPUs ({capability}, {cpu}); {args.threads} threads, batch {args.batch}")

    rows = bench_effnet(args.sizes, args.threads, args.batch, args.repeat, args.images, not args.no_int8)
    if not args.no_clip:
        rows += bench_clip(args.batch, max(1, args.repeat - 1), min(args.images, 16))
    header = ("size", "variant", "img/s", "ms/batch", "cos mean", "cos min")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print(bench_prepare(args.images))


if __name__ == "__main__":
    main()
