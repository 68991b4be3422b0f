"""Fine-tune datasets arriving with a request: images (or a zip of them, with optional captions) are checked
and written to storage under `tenants/<tenant>/datasets/<job>/` before the job is queued.

Memory stays bounded whatever the upload claims: every file (an upload or a zip member) is copied in small
chunks to a temporary file, counted against the per-file and whole-dataset budgets as it inflates and refused
at the first byte past either; an image's size in pixels is read from its header and refused before anything
decodes it; and `UploadSlots` bounds how many uploads a gateway process unpacks at once.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from core.images import ImageRefused, read_header
from core.provenance import forbids_training
from core.settings import GatewaySettings
from core.storage import Storage, content_type_for
from service.problems import ProblemError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
# Captions and per-image metadata the trainer may read beside the images.
TEXT_EXTENSIONS = frozenset({".txt", ".json", ".jsonl"})
MAX_TEXT_BYTES = 1024 * 1024
MAX_FILES = 10_000
_CHUNK = 256 * 1024
# How long to suggest waiting when every upload slot is taken (an upload takes seconds to minutes).
UPLOADS_BUSY_RETRY_S = 15
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


def check_image(name: str, path: Path | bytes, max_pixels: int) -> None:
    """A PNG, JPEG or WebP of at most `max_pixels`, judged from its header (a decompression bomb is refused
    before anything decodes it) and then verified. `path`: a file, or the image's bytes."""
    try:
        image_format, _, _ = read_header(path, max_pixels)
    except ImageRefused as exc:
        raise UploadRejected(f"{name} {exc}") from exc
    if image_format not in IMAGE_FORMATS:
        raise UploadRejected(f"{name} is {image_format}; use PNG, JPEG or WebP")
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadRejected(f"{name} is not a readable image") from exc


def training_forbidden(path: Path) -> bool:
    """Whether the image's Content Credentials forbid AI training (core/provenance.py reads them); only
    files that hold a C2PA manifest store at all are handed to the C2PA reader."""
    data = path.read_bytes()
    return b"c2pa" in data and forbids_training(data)


class UploadSlots:
    """How many uploads one gateway process unpacks at once; past that, a 503 with Retry-After (a client
    retries; waiting here would keep its whole upload on the gateway's disk meanwhile). Taken and given back
    on the event loop only, so a plain counter is enough."""

    def __init__(self, limit: int) -> None:
        self.limit, self.busy = limit, 0

    def take(self) -> None:
        if self.busy >= self.limit:
            raise ProblemError(
                503,
                "Service Unavailable",
                f"this gateway is already unpacking {self.limit} uploads; retry shortly",
                "uploads-busy",
                headers={"Retry-After": str(UPLOADS_BUSY_RETRY_S)},
                retry_after=UPLOADS_BUSY_RETRY_S,
            )
        self.busy += 1

    def give_back(self) -> None:
        self.busy -= 1

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.take()
        try:
            yield
        finally:
            self.give_back()


class DatasetWriter:
    def __init__(self, storage: Storage, prefix: str, gateway: GatewaySettings) -> None:
        self.storage, self.prefix = storage, prefix
        self.max_bytes, self.max_file_bytes = gateway.max_upload_bytes, gateway.max_dataset_file_bytes
        self.max_pixels = gateway.max_image_pixels
        self.summary = DatasetSummary()
        self._names: set[str] = set()
        self.not_for_training: list[str] = []  # images whose Content Credentials forbid AI training

    def _unique(self, name: str) -> str:
        candidate, counter = name, 1
        while candidate in self._names:
            stem, dot, ext = name.rpartition(".")
            candidate = f"{stem}-{counter}.{ext}" if dot else f"{name}-{counter}"
            counter += 1
        self._names.add(candidate)
        return candidate

    def _copy(self, original_name: str, source: BinaryIO, target: BinaryIO, file_limit: int) -> None:
        """Copy in chunks, counting every byte against the file's and the dataset's budgets."""
        size = 0
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            self.summary.bytes += len(chunk)
            if size > file_limit:
                raise UploadTooLarge(f"{original_name} is larger than {file_limit} bytes")
            if self.summary.bytes > self.max_bytes:
                raise UploadTooLarge(f"the dataset is larger than {self.max_bytes} bytes once unpacked")
            target.write(chunk)
        target.flush()

    def add(self, original_name: str, source: BinaryIO) -> None:
        """One file: checked by its name, streamed to a temporary file, checked by its content, stored."""
        name = safe_name(original_name)
        if name is None:
            return
        extension = _extension(name)
        if extension not in IMAGE_EXTENSIONS | TEXT_EXTENSIONS:
            raise UploadRejected(
                f"{original_name}: only images ({', '.join(sorted(IMAGE_EXTENSIONS))}), captions "
                f"({', '.join(sorted(TEXT_EXTENSIONS))}) and .zip archives of them can be uploaded"
            )
        if self.summary.images + self.summary.texts >= MAX_FILES:
            raise UploadRejected(f"the dataset has more than {MAX_FILES} files")
        is_image = extension in IMAGE_EXTENSIONS
        with tempfile.NamedTemporaryFile(prefix="fae-upload-") as spool:
            self._copy(original_name, source, spool, self.max_file_bytes if is_image else MAX_TEXT_BYTES)
            if is_image:
                check_image(original_name, Path(spool.name), self.max_pixels)
                if training_forbidden(Path(spool.name)):
                    self.not_for_training.append(original_name)
                    return
                self.summary.images += 1
            else:
                self.summary.texts += 1
            name = self._unique(name)
            self.storage.put_file(self.prefix + name, spool.name, content_type_for(name))

    def check_training_allowed(self) -> None:
        """Refuse the whole dataset, naming the files, when images forbid training (after every file was seen,
        so one answer names them all)."""
        if self.not_for_training:
            names = ", ".join(self.not_for_training[:20]) + (
                " and more" if len(self.not_for_training) > 20 else ""
            )
            raise UploadRejected(
                f"{len(self.not_for_training)} image(s) carry C2PA Content Credentials that do not allow AI "
                f"training (c2pa.training-mining: notAllowed): {names}; remove them from the dataset"
            )

    def add_upload(self, filename: str, stream: BinaryIO) -> None:
        if _extension(filename) == ".zip":
            self.add_zip(filename, stream)
        else:
            self.add(filename, stream)

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
                # A declared size past the budget is refused at once; a lying one is caught while inflating.
                if info.file_size > min(self.max_file_bytes, self.max_bytes - self.summary.bytes):
                    raise UploadTooLarge(f"{info.filename} in {filename} is too large once unpacked")
                try:
                    with archive.open(info) as member:
                        self.add(info.filename, member)
                except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError) as exc:
                    raise UploadRejected(f"{filename}: cannot read {info.filename}") from exc
