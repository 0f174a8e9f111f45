"""Backbones: spec parsing, real EfficientNet-Lite0 weights, ONNX parity, the torch-free ONNX path, CLIP."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier import backbones
from classifier.backbones import (
    Backbone,
    BackboneLoadError,
    BackboneSpec,
    BackboneSpecError,
    OnnxBackbone,
    OpenClipBackbone,
    TorchBackbone,
    load_backbone,
    parse_spec,
    prepare_batch,
)

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "classifier" / "dataset" / "images"
# Dataset photos with an obvious ImageNet subject -> acceptable ImageNet-1k class indices:
# skimage "chelsea" (tabby, tiger, Persian, Siamese, Egyptian cat), skimage "coffee" (coffee mug, espresso,
# cup), MATE "LadyBird" (ladybug), MATE "YellowFlower" (daisy), skimage "motorcycle_left" (moped, scooter).
PHOTOS = {
    "cd6d10deb8106c6d.jpg": {281, 282, 283, 284, 285},
    "7b9e429542ce5637.jpg": {504, 967, 968},
    "0fdf9a9d21cf3bc5.jpg": {301},
    "96d96805157ed43c.jpg": {985},
    "69a3af27e34a4c60.jpg": {665, 670},
}
CLIP_SPEC = "clip:ViT-S-32-alt@none"  # the smallest built-in open_clip ViT: builds in under a second


def load_rgb(path: Path) -> Image.Image:
    """Dataset image flattened onto white, as callers are expected to do before embedding."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [load_rgb(IMAGES / name) for name in PHOTOS]


@pytest.fixture(scope="module")
def mixed_images() -> list[Image.Image]:
    """Every 250th dataset image: plots, icons, text scans, photos, in their natural sizes."""
    return [load_rgb(path) for path in sorted(IMAGES.iterdir())[::250]]


@pytest.fixture(scope="module")
def torch_backbone() -> TorchBackbone:
    return TorchBackbone("effnet-lite0", threads=2)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "effnet-lite0.onnx"
    backbones.export_onnx("effnet-lite0", path)
    return path


@pytest.fixture(scope="module")
def onnx_backbone(onnx_path: Path) -> Backbone:
    return load_backbone("effnet-lite0", onnx_path=onnx_path, threads=2)


@pytest.fixture(scope="module")
def clip_backbone() -> Backbone:
    return load_backbone(CLIP_SPEC, threads=2, bf16=False)


# --- spec parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected", "canonical"),
    [
        (
            "effnet-lite0",
            BackboneSpec("effnet-lite0", "tf_efficientnet_lite0", "imagenet", 224),
            "effnet-lite0",
        ),
        (
            "effnet-lite0@224",
            BackboneSpec("effnet-lite0", "tf_efficientnet_lite0", "imagenet", 224),
            "effnet-lite0",
        ),
        (
            " effnet-lite0@160 ",
            BackboneSpec("effnet-lite0", "tf_efficientnet_lite0", "imagenet", 160),
            "effnet-lite0@160",
        ),
        (
            "clip:ViT-B-32@laion2b_s34b_b79k",
            BackboneSpec("clip", "ViT-B-32", "laion2b_s34b_b79k", None),
            "clip:ViT-B-32@laion2b_s34b_b79k",
        ),
        (
            "effnet-lite0@128+stages",
            BackboneSpec("effnet-lite0", "tf_efficientnet_lite0", "imagenet", 128, stages=True),
            "effnet-lite0@128+stages",
        ),
        (
            "effnet-lite0@224+stages",
            BackboneSpec("effnet-lite0", "tf_efficientnet_lite0", "imagenet", 224, stages=True),
            "effnet-lite0+stages",
        ),
        ("clip:ViT-B-32@none", BackboneSpec("clip", "ViT-B-32", None, None), "clip:ViT-B-32@none"),
        ("clip:RN50@None", BackboneSpec("clip", "RN50", None, None), "clip:RN50@none"),
        (
            "clip:MobileCLIP2-S0@/srv/models/a@b/open_clip.pt",
            BackboneSpec("clip", "MobileCLIP2-S0", "/srv/models/a@b/open_clip.pt", None),
            "clip:MobileCLIP2-S0@/srv/models/a@b/open_clip.pt",
        ),
    ],
)
def test_parse_spec_accepts(spec: str, expected: BackboneSpec, canonical: str) -> None:
    parsed = parse_spec(spec)
    assert parsed == expected
    assert parsed.spec == canonical
    assert parse_spec(parsed.spec) == parsed


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "effnet",
        "effnet-lite1",
        "effnet-lite0@",
        "effnet-lite0@abc",
        "effnet-lite0@-160",
        "effnet-lite0@16",
        "effnet-lite0@4096",
        "effnet-lite0@160@1",
        "effnet-lite0+stages@128",
        "effnet-lite0@128+stages+stages",
        "effnet-lite0@128+stage",
        "clip:ViT-B-32@none+stages",
        "clip:ViT-B-32",
        "clip:ViT-B-32@",
        "clip:@laion2b_s34b_b79k",
        "clip:../ViT@none",
        "resnet50",
    ],
)
def test_parse_spec_rejects(spec: str) -> None:
    with pytest.raises(BackboneSpecError) as caught:
        parse_spec(spec)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_backbone_spec"


# --- preprocessing ------------------------------------------------------------------------------------------


def test_prepare_batch_squashes_the_whole_image_and_scales_to_plus_minus_one() -> None:
    # A wide image: black left quarter, white right quarter. A centre crop would lose both ends.
    wide = np.full((50, 400, 3), 128, np.uint8)
    wide[:, :100] = 0
    wide[:, 300:] = 255
    batch = prepare_batch([Image.fromarray(wide), Image.new("L", (7, 300), 255)], 64)
    assert batch.shape == (2, 3, 64, 64)
    assert batch.dtype == np.float32
    assert np.allclose(batch[0, :, :, :10], -1.0)  # black -> -1 (mean = std = 0.5)
    assert np.allclose(batch[0, :, :, -10:], 1.0)  # white -> +1
    assert np.allclose(batch[0, :, :, 30:34], 128 / 127.5 - 1, atol=1e-6)
    assert np.allclose(batch[1], 1.0)  # greyscale expands to three equal channels


def test_prepare_batch_drops_alpha_and_uses_given_normalisation() -> None:
    transparent_red = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    batch = prepare_batch([transparent_red], 8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert np.allclose(batch[0, 0], 1.0)
    assert np.allclose(batch[0, 1:], 0.0)
    assert prepare_batch([], 8).shape == (0, 3, 8, 8)


# --- EfficientNet-Lite0 weights -----------------------------------------------------------------------------


def test_packaged_weights_map_onto_timm_with_no_missing_or_unexpected_keys() -> None:
    import timm
    import torch

    source = torch.load(backbones.efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    counts = [len(list(stage.children())) for stage in model.get_submodule("blocks").children()]
    renamed = backbones.rename_efficientnet_pytorch_keys(source, counts)
    assert len(renamed) == len(source) == len(model.state_dict())
    result = model.load_state_dict(renamed, strict=False)
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    # Spot-check that tensors landed in the right place, including the flat -> (stage, index) mapping.
    loaded = model.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(loaded["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(loaded["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(loaded["blocks.2.1.bn1.running_var"], source["_blocks.4._bn0.running_var"])


def test_unknown_efficientnet_pytorch_key_is_refused() -> None:
    import torch

    with pytest.raises(ValueError, match=r"_blocks\.0\._squeeze"):
        backbones.rename_efficientnet_pytorch_keys({"_blocks.0._squeeze.weight": torch.zeros(1)}, [1])


def test_real_photos_get_confident_plausible_imagenet_classes(photos: list[Image.Image]) -> None:
    import torch

    model = backbones.build_efficientnet_lite0(with_classifier=True, input_size=224)
    with torch.inference_mode():
        probabilities = model(torch.from_numpy(prepare_batch(photos, 224))).softmax(-1).numpy()
    for (name, expected), p in zip(PHOTOS.items(), probabilities, strict=True):
        top5 = set(np.argsort(p)[-5:].tolist())
        assert top5 & expected, f"{name}: top-5 {sorted(top5)} has none of {sorted(expected)}"
        assert p.max() > 0.3, f"{name}: not confident ({p.max():.3f}); weights look random"


def test_feature_model_has_no_classifier_and_pools_1280_dims(torch_backbone: TorchBackbone) -> None:
    assert isinstance(torch_backbone, Backbone)
    assert (torch_backbone.spec, torch_backbone.dim, torch_backbone.input_size) == ("effnet-lite0", 1280, 224)
    params = dict(torch_backbone._model.named_parameters())
    assert not any(name.startswith("classifier") for name in params)


def test_torch_embeddings_are_deterministic_and_batch_independent(
    torch_backbone: TorchBackbone, mixed_images: list[Image.Image]
) -> None:
    images = mixed_images[:2]
    first = torch_backbone.embed(images)
    assert first.shape == (2, 1280)
    assert first.dtype == np.float32
    assert np.array_equal(first, torch_backbone.embed(images))
    one_by_one = np.concatenate([torch_backbone.embed([image]) for image in images])
    assert cosine(first, one_by_one).min() > 0.9999
    assert cosine(first[:1], first[1:2])[0] < 0.99  # different images, different embeddings
    assert torch_backbone.embed([]).shape == (0, 1280)


# --- ONNX -------------------------------------------------------------------------------------------------


def test_onnx_embeddings_match_torch(
    onnx_backbone: Backbone, torch_backbone: TorchBackbone, mixed_images: list[Image.Image]
) -> None:
    assert isinstance(onnx_backbone, OnnxBackbone)
    assert (onnx_backbone.spec, onnx_backbone.dim, onnx_backbone.input_size) == ("effnet-lite0", 1280, 224)
    ours = onnx_backbone.embed(mixed_images)
    assert ours.shape == (len(mixed_images), 1280)
    assert ours.dtype == np.float32
    assert cosine(ours, torch_backbone.embed(mixed_images)).min() >= 0.999
    assert np.array_equal(ours, onnx_backbone.embed(mixed_images))


def test_onnx_backbone_is_safe_to_share_between_threads(
    onnx_backbone: Backbone, mixed_images: list[Image.Image]
) -> None:
    chunks = [mixed_images[i : i + 2] for i in range(0, 8, 2)]
    serial = [onnx_backbone.embed(chunk) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(onnx_backbone.embed, chunks))
    for one, other in zip(serial, parallel, strict=True):
        assert np.allclose(one, other, atol=1e-5)


def test_onnx_file_for_another_input_size_is_refused(onnx_path: Path) -> None:
    with pytest.raises(BackboneLoadError, match="effnet-lite0@160"):
        OnnxBackbone("effnet-lite0@160", onnx_path)


def test_non_default_input_size_exports_and_falls_back_to_torch(tmp_path: Path, photos: list[Image.Image]) -> None:
    path = tmp_path / "small.onnx"
    backbones.export_onnx("effnet-lite0@160", path)
    small = load_backbone("effnet-lite0@160", onnx_path=path, threads=2)
    assert isinstance(small, OnnxBackbone)
    assert (small.spec, small.input_size, small.dim) == ("effnet-lite0@160", 160, 1280)
    # Without the exported file the same spec runs in torch, with the same embeddings.
    fallback = load_backbone("effnet-lite0@160", onnx_path=tmp_path / "absent.onnx", threads=2)
    assert isinstance(fallback, TorchBackbone)
    assert fallback.input_size == 160
    assert cosine(small.embed(photos[:1]), fallback.embed(photos[:1])).min() >= 0.999


def stage_statistics_by_hooks(images: list[Image.Image], size: int) -> np.ndarray:
    """Reference for ``+stages``: the mean and standard deviation of each channel after stages 1-5, read
    with forward hooks on the plain network (what the experiment that chose these features computed)."""
    import torch

    model = backbones.build_efficientnet_lite0(input_size=size)
    found: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Callable[..., None]:
        def hook(_module, _inputs, output: torch.Tensor) -> None:
            found[index] = torch.cat([output.mean((2, 3)), output.std((2, 3))], 1)

        return hook

    for index, stage in enumerate(model.blocks):
        stage.register_forward_hook(keep(index))
    with torch.inference_mode():
        model(torch.from_numpy(prepare_batch(images, size)))
    return torch.cat([found[index] for index in (1, 2, 3, 4, 5)], 1).numpy()


def test_stage_statistics_extend_the_plain_embedding(tmp_path: Path, mixed_images: list[Image.Image]) -> None:
    images = mixed_images[:6]
    plain = TorchBackbone("effnet-lite0@128", threads=2)
    staged = TorchBackbone("effnet-lite0@128+stages", threads=2)
    assert (staged.spec, staged.input_size) == ("effnet-lite0@128+stages", 128)
    assert (staged.dim, staged.parts) == (2176, (1280, 896))
    assert plain.parts == (1280,)
    ours = staged.embed(images)
    assert ours.shape == (6, 2176)
    # The same forward pass: the final features are exactly the plain backbone's.
    assert np.allclose(ours[:, :1280], plain.embed(images), atol=1e-5)
    assert np.allclose(ours[:, 1280:], stage_statistics_by_hooks(images, 128), rtol=1e-4, atol=1e-4)
    assert (ours[:, 1280:] != 0).mean() > 0.5  # real statistics, not zero padding
    # Exported, the statistics come out of ONNX Runtime too; a plain export is refused for the spec.
    path = tmp_path / "staged.onnx"
    backbones.export_onnx("effnet-lite0@128+stages", path)
    served = load_backbone("effnet-lite0@128+stages", onnx_path=path, threads=2)
    assert isinstance(served, OnnxBackbone)
    assert (served.dim, served.parts) == (2176, (1280, 896))
    assert cosine(served.embed(images), ours).min() >= 0.9999
    with pytest.raises(BackboneLoadError, match=r"effnet-lite0@128\+stages"):
        OnnxBackbone("effnet-lite0@128", path)


def test_export_refuses_clip_specs(tmp_path: Path) -> None:
    with pytest.raises(BackboneSpecError):
        backbones.export_onnx(CLIP_SPEC, tmp_path / "clip.onnx")


def test_onnx_path_never_imports_torch(onnx_path: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from PIL import Image
        from classifier.backbones import OnnxBackbone, load_backbone

        backbone = load_backbone("effnet-lite0", onnx_path=Path({str(onnx_path)!r}), threads=1)
        assert isinstance(backbone, OnnxBackbone), type(backbone)
        assert backbone.embed([Image.new("RGB", (300, 40), "red")]).shape == (1, 1280)
        heavy = sorted(name for name in ("torch", "timm", "open_clip", "torchvision") if name in sys.modules)
        assert not heavy, heavy
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- open_clip ----------------------------------------------------------------------------------------------

# A real built-in architecture for the main checks, and a tiny registered one (real open_clip code, 0.2 M
# parameters) for the checks that build several models or write checkpoints.
TINY_ARCH = "InvertOrNot-Test-Tiny"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    import open_clip

    config = tmp_path_factory.mktemp("open_clip") / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    return f"clip:{TINY_ARCH}@none"


@pytest.fixture(scope="module")
def clip_embeddings(clip_backbone: Backbone, photos: list[Image.Image]) -> np.ndarray:
    return clip_backbone.embed(photos)


def test_clip_embeddings_are_normalised_and_distinct(
    clip_backbone: Backbone, clip_embeddings: np.ndarray, photos: list[Image.Image]
) -> None:
    assert isinstance(clip_backbone, OpenClipBackbone)
    assert (clip_backbone.spec, clip_backbone.dim, clip_backbone.input_size) == (CLIP_SPEC, 256, 224)
    assert clip_embeddings.shape == (len(PHOTOS), 256)
    assert clip_embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(clip_embeddings, axis=1), 1.0, atol=1e-5)
    # Random weights still see different pixels: no two photos share an embedding.
    similarity = clip_embeddings @ clip_embeddings.T
    assert similarity[~np.eye(len(PHOTOS), dtype=bool)].max() < 0.9999
    # Deterministic, and independent of the other images in the batch up to float rounding.
    assert np.array_equal(clip_backbone.embed(photos), clip_embeddings)
    assert np.allclose(clip_backbone.embed(photos[::-1]), clip_embeddings[::-1], atol=1e-5)


def test_random_clip_weights_are_the_same_network_every_time(tiny_clip_spec: str, photos: list[Image.Image]) -> None:
    import torch

    first = load_backbone(tiny_clip_spec, bf16=False).embed(photos)
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    second = load_backbone(tiny_clip_spec, bf16=False)
    assert second.dim == 32
    assert np.array_equal(second.embed(photos), first)


def test_clip_loads_a_local_checkpoint(tiny_clip_spec: str, photos: list[Image.Image], tmp_path: Path) -> None:
    import torch

    random = load_backbone(tiny_clip_spec, bf16=False)
    assert isinstance(random, OpenClipBackbone)
    # Shift the image tower's weights so that the result cannot come from the random-weight seed.
    state = {
        key: value + 0.01 if key.startswith("visual.") and value.is_floating_point() else value
        for key, value in random._model.state_dict().items()
    }
    checkpoint = tmp_path / "weights.pt"
    torch.save(state, checkpoint)
    spec = f"clip:{TINY_ARCH}@{checkpoint}"
    loaded = load_backbone(spec, bf16=False)
    assert isinstance(loaded, OpenClipBackbone)
    assert loaded.spec == spec
    for key, value in loaded._model.state_dict().items():
        assert torch.equal(value, state[key]), key
    embeddings = loaded.embed(photos)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings, random.embed(photos), atol=1e-3)
    # The same weights applied in memory give the same embeddings as the ones read from the file.
    random._model.load_state_dict(state)
    assert np.allclose(random.embed(photos), embeddings, atol=1e-6)


def test_clip_bf16_stays_close_to_fp32(tiny_clip_spec: str, photos: list[Image.Image]) -> None:
    full = OpenClipBackbone(tiny_clip_spec, bf16=False)
    half = OpenClipBackbone(tiny_clip_spec, bf16=True)
    assert (full.bf16, half.bf16) == (False, True)
    embeddings = half.embed(photos)
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert cosine(embeddings, full.embed(photos)).min() > 0.99


def test_clip_bf16_auto_follows_the_cpu(tiny_clip_spec: str) -> None:
    assert OpenClipBackbone(tiny_clip_spec).bf16 == backbones.cpu_supports_bf16()


@pytest.mark.parametrize(
    "spec",
    ["clip:ViT-S-32-alt@/nonexistent/weights.pt", "clip:ViT-S-32-alt@not_a_tag", "clip:NoSuchNet@none"],
)
def test_clip_weights_that_cannot_be_found_raise_a_load_error(spec: str) -> None:
    with pytest.raises(BackboneLoadError) as caught:
        load_backbone(spec)
    assert caught.value.code == "backbone_unavailable"
