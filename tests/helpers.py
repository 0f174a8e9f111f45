"""Small helpers shared by tests (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from classifier.model import MANIFEST_FILE


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))
