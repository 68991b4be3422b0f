"""Fine-tune datasets arriving with a request: images (or a zip of them, with optional captions) are checked
and written to storage under `tenants/<tenant>/datasets/<job>/` before the job is queued."""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from core.storage import Storage, content_type_for

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# Captions and per-image metadata the trainer may read beside the images.
TEXT_EXTENSIONS = frozenset({".txt", ".json", ".jsonl"})
MAX_TEXT_BYTES = 1024 * 1024
MAX_FILES = 10_000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadRejected(ValueError):
    """The upload is not a usable dataset (the message says why)."""


class UploadTooLarge(UploadRejected):
    pass


@dataclass
class DatasetSummary:
    images: int = 0
    texts: int = 0
    bytes: int = 0


def safe_name(name: str) -> str | None:
    """A storage-safe relative path from an uploaded name (None: skip it, e.g. a hidden or macOS file)."""
    parts = [part.strip() for part in re.split(r"[\\/]+", name)]
    if any(part.startswith(".") or part == "__MACOSX" for part in parts if part):
        return None
    cleaned = [_UNSAFE.sub("_", part) for part in parts if part and part not in (".", "..")]
    cleaned = [part for part in cleaned if part.strip("_")]
    return "/".join(cleaned) or None


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def check_image(name: str, data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadRejected(f"{name} is not a readable image") from exc
    if image_format not in IMAGE_FORMATS:
        raise UploadRejected(f"{name} is {image_format}; use PNG, JPEG or WebP")


class DatasetWriter:
    def __init__(self, storage: Storage, prefix: str, max_bytes: int) -> None:
        self.storage, self.prefix, self.max_bytes = storage, prefix, max_bytes
        self.summary = DatasetSummary()
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, counter = name, 1
        while candidate in self._names:
            stem, dot, ext = name.rpartition(".")
            candidate = f"{stem}-{counter}.{ext}" if dot else f"{name}-{counter}"
            counter += 1
        self._names.add(candidate)
        return candidate

    def add(self, original_name: str, data: bytes) -> None:
        name = safe_name(original_name)
        if name is None:
            return
        extension = _extension(name)
        if extension in IMAGE_EXTENSIONS:
            check_image(original_name, data)
            self.summary.images += 1
        elif extension in TEXT_EXTENSIONS:
            if len(data) > MAX_TEXT_BYTES:
                raise UploadRejected(f"{original_name} is larger than {MAX_TEXT_BYTES} bytes")
            self.summary.texts += 1
        else:
            raise UploadRejected(
                f"{original_name}: only images ({', '.join(sorted(IMAGE_EXTENSIONS))}), captions "
                f"({', '.join(sorted(TEXT_EXTENSIONS))}) and .zip archives of them can be uploaded"
            )
        self.summary.bytes += len(data)
        if self.summary.bytes > self.max_bytes:
            raise UploadTooLarge(f"the dataset is larger than {self.max_bytes} bytes")
        if self.summary.images + self.summary.texts > MAX_FILES:
            raise UploadRejected(f"the dataset has more than {MAX_FILES} files")
        name = self._unique(name)
        self.storage.put_bytes(self.prefix + name, data, content_type_for(name))

    def add_upload(self, filename: str, stream: BinaryIO) -> None:
        if _extension(filename) == ".zip":
            self.add_zip(filename, stream)
            return
        data = stream.read(self.max_bytes + 1)
        self.add(filename, data)

    def add_zip(self, filename: str, stream: BinaryIO) -> None:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as exc:
            raise UploadRejected(f"{filename} is not a valid zip archive") from exc
        with archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) > MAX_FILES:
                raise UploadRejected(f"{filename} has more than {MAX_FILES} files")
            for info in members:
                # Declared sizes can lie: read at most what is left of the budget, plus one byte.
                budget = self.max_bytes - self.summary.bytes
                if info.file_size > budget:
                    raise UploadTooLarge(f"the dataset is larger than {self.max_bytes} bytes once unpacked")
                try:
                    with archive.open(info) as member:
                        data = member.read(budget + 1)
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                    raise UploadRejected(f"{filename}: cannot read {info.filename}") from exc
                if len(data) > budget:
                    raise UploadTooLarge(f"the dataset is larger than {self.max_bytes} bytes once unpacked")
                self.add(info.filename, data)
