"""Content-addressed storage for the images behind corrections and labels, so they stay trainable.

An image is kept under its SHA-256 (`ab/abcdef...`, no extension: the bytes say what they are), written to a
temporary file, fsync'd, renamed into place and the directory fsync'd, so a file that exists is complete
even after a crash. Writing the same image twice is a no-op. The store is written before the database row
that refers to it, so a row never points at a missing file (an orphan file after a crash is harmless).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

from classifier.decode import sniff_format

#: File extension per sniffed format, for exports and downloads.
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "SVG": ".svg"}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extension_of(data: bytes) -> str:
    """`.png`, `.jpg`, ... from the bytes' magic number (`.bin` for anything else)."""
    return EXTENSIONS.get(sniff_format(data) or "", ".bin")


class ImageStore(Protocol):
    """Blocking calls: run them off the event loop (`asyncio.to_thread`)."""

    def put(self, data: bytes) -> str:
        """Store `data` durably; returns its SHA-256."""
        ...

    def get(self, sha256: str) -> bytes | None: ...

    def has(self, sha256: str) -> bool: ...

    def path(self, sha256: str) -> Path | None:
        """A file holding the image, for batch jobs (training, export); None when not stored on disk."""
        ...


class DirectoryImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a lower-case hex SHA-256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = sha256_of(data)
        target = self._file(sha256)
        if target.exists():
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{sha256[:12]}-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
        return sha256

    def get(self, sha256: str) -> bytes | None:
        try:
            return self._file(sha256).read_bytes()
        except (FileNotFoundError, ValueError):
            return None

    def has(self, sha256: str) -> bool:
        try:
            return self._file(sha256).is_file()
        except ValueError:
            return False

    def path(self, sha256: str) -> Path | None:
        return self._file(sha256) if self.has(sha256) else None


class MemoryImageStore:
    """For an in-memory database (tests, throwaway servers): gone when the process ends."""

    def __init__(self) -> None:
        self._images: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        sha256 = sha256_of(data)
        with self._lock:
            self._images.setdefault(sha256, data)
        return sha256

    def get(self, sha256: str) -> bytes | None:
        return self._images.get(sha256)

    def has(self, sha256: str) -> bool:
        return sha256 in self._images

    def path(self, sha256: str) -> Path | None:
        return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: the new directory entry must reach the disk too (POSIX)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms that cannot open directories (Windows) persist renames themselves
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
