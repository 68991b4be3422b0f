"""Image datasets for training and fine-tunes: a folder (or a zip) of images with optional captions and labels.

Layout of a folder (searched recursively, in sorted order; hidden files and `__MACOSX` are ignored):
- images in any format PIL reads; each is decoded once when the folder is scanned, and files that are not
  images or do not decode are skipped and listed in `ImageDataset.skipped` (never fatal);
- captions: a sidecar `NAME.txt` next to `NAME.png`, or a JSONL manifest `captions.jsonl` / `metadata.jsonl` at
  the root with lines `{"file": "rel/path.png", "caption": "...", "label": 3}` (`file_name` is accepted for
  `file`; the manifest wins over a sidecar). A manifest caption may be a list of strings: variants of one
  caption (e.g. the full caption and its short name), of which training draws one per sample and step;
- class labels (class-conditional training only): the manifest's `label`, else, when every image sits in a
  first-level subfolder, the sorted subfolder names (the ImageFolder convention); else none.
A zip is extracted first (see `extract_zip_safely`). S3 prefixes are downloaded to a folder by the service.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from .errors import DatasetError
from .fingerprint import json_fingerprint
from .io import write_directory_atomically

MANIFEST_NAMES = ("captions.jsonl", "metadata.jsonl")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 80_000_000  # about 9000×9000: larger files are skipped as "too large", not decoded
MAX_ZIP_ENTRIES = 20_000
MAX_ZIP_BYTES = 4 * 1024**3
MAX_CAPTION_CHARS = 2000


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    relpath: str  # POSIX path relative to the dataset root
    sha256: str
    caption: str | None = None
    label: int | None = None
    caption_variants: tuple[str, ...] = ()  # further captions of the same image (a manifest list)


@dataclass(frozen=True)
class SkippedFile:
    relpath: str
    reason: str


@dataclass
class ImageDataset:
    root: Path
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """Identity of the image contents (not captions or labels): what latents and features depend on."""
        return json_fingerprint([[r.relpath, r.sha256] for r in self.records])

    def captions(self) -> list[str]:
        return [r.caption or "" for r in self.records]

    def caption_choices(self) -> list[tuple[str, ...]]:
        """Every caption of each image, its first caption first ("" for an uncaptioned image)."""
        return [(r.caption or "", *r.caption_variants) for r in self.records]

    def labels(self) -> list[int] | None:
        if any(r.label is None for r in self.records):
            return None
        return [int(r.label) for r in self.records if r.label is not None]

    def load(self, index: int, size: int) -> torch.Tensor:
        """Image `index` as uint8 3×size×size (center crop to a square, bicubic resize)."""
        record = self.records[index]
        try:
            with PIL.Image.open(record.path) as image:
                return image_to_tensor(image, size)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            raise DatasetError(
                f"{record.relpath} could not be read any more ({exc}); was the dataset changed?"
            ) from exc

    def batches(self, size: int, batch_size: int) -> Iterator[torch.Tensor]:
        """All images in order as uint8 batches B×3×size×size."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield torch.stack([self.load(i, size) for i in range(start, stop)])

    def report(self, max_listed: int = 50) -> dict[str, Any]:
        return {
            "num_images": len(self.records),
            "num_skipped": len(self.skipped),
            "skipped": [{"file": s.relpath, "reason": s.reason} for s in self.skipped[:max_listed]],
            "num_captioned": sum(1 for r in self.records if r.caption),
        }


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, upright per its EXIF orientation, transparency composited over white (logos often have an alpha
    channel). The one conversion training images (`image_to_tensor`) and img2img inputs both go through."""
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def image_to_tensor(image: PIL.Image.Image, size: int) -> torch.Tensor:
    """RGB uint8 3×size×size (see `to_rgb`), center-cropped to a square and resized bicubically."""
    image = PIL.ImageOps.fit(to_rgb(image), (size, size), method=PIL.Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _decode_check(data: bytes) -> str | None:
    """None when `data` is a decodable image, else the reason it is skipped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    return f"image too large ({image.width}×{image.height} pixels)"
                image.load()  # a truncated or corrupt file fails here, not at open()
                if image.width < 1 or image.height < 1:
                    return "empty image"
    except PIL.UnidentifiedImageError:
        return "not an image"
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        return "image too large (decompression bomb guard)"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's decoders raise all of these
        return f"corrupt image ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def read_manifest_file(path: Path, skipped: list[SkippedFile]) -> dict[str, dict[str, Any]]:
    """The entries of one JSONL manifest by their POSIX relpath, in file order (a later line for the same file
    wins). A line that is not a JSON object with a string `file` (or `file_name`) is not fatal: it is listed in
    `skipped` as `NAME:LINE`."""
    entries: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
            file = entry.get("file", entry.get("file_name"))
            if not isinstance(file, str):
                raise ValueError("no 'file' field")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            skipped.append(SkippedFile(f"{path.name}:{number}", f"bad manifest line ({exc})"))
            continue
        entries[PurePosixPath(file).as_posix().lstrip("./")] = entry
    return entries


def read_manifest(root: Path, skipped: list[SkippedFile]) -> dict[str, dict[str, Any]]:
    """The manifest entries of dataset folder `root` (`captions.jsonl`, then `metadata.jsonl`, which wins for a
    file both list); malformed lines are listed in `skipped` (see `read_manifest_file`)."""
    entries: dict[str, dict[str, Any]] = {}
    for name in MANIFEST_NAMES:
        path = Path(root) / name
        if path.is_file():
            entries.update(read_manifest_file(path, skipped))
    return entries


def _is_ignored(relative: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def clean_caption(text: str) -> str:
    """A caption as training uses it: whitespace runs collapsed to one space, at most MAX_CAPTION_CHARS."""
    return " ".join(text.split())[:MAX_CAPTION_CHARS]


def captions_from(entry: dict[str, Any] | None, sidecar: Path) -> tuple[str | None, tuple[str, ...]]:
    """(first caption, further variants); the manifest's caption (a string or a list of strings) wins."""
    value = entry.get("caption") if entry is not None else None
    texts = [value] if isinstance(value, str) else []
    if isinstance(value, list):
        texts = [v for v in value if isinstance(v, str)]
    if not texts and sidecar.is_file():
        texts = [sidecar.read_text(encoding="utf-8", errors="replace")]
    # de-duplicated in order, empty ones dropped
    cleaned = list(dict.fromkeys(c for c in (clean_caption(t) for t in texts) if c))
    return (cleaned[0], tuple(cleaned[1:])) if cleaned else (None, ())


def scan_image_folder(root: Path, max_images: int | None = None) -> ImageDataset:
    """Every usable image under `root` with its caption and label; unusable files are listed as skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    skipped: list[SkippedFile] = []
    manifest = read_manifest(root, skipped)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not _is_ignored(p.relative_to(root)))
    stems = {p.with_suffix("") for p in files if p.suffix.lower() != ".txt"}
    found: list[tuple[Path, str, str, dict[str, Any] | None]] = []
    for path in files:
        relpath = path.relative_to(root).as_posix()
        if path.parent == root and path.name in MANIFEST_NAMES:
            continue
        if path.suffix.lower() == ".txt" and path.with_suffix("") in stems:
            continue  # a caption sidecar
        if path.is_symlink():
            skipped.append(SkippedFile(relpath, "symbolic link"))
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            skipped.append(SkippedFile(relpath, f"file larger than {MAX_FILE_BYTES // 2**20} MiB"))
            continue
        data = path.read_bytes()
        reason = _decode_check(data)
        if reason is not None:
            skipped.append(SkippedFile(relpath, reason))
            continue
        found.append((path, relpath, hashlib.sha256(data).hexdigest(), manifest.get(relpath)))
        if max_images is not None and len(found) > max_images:
            raise DatasetError(
                f"{root} holds more than {max_images} usable images; the limit is {max_images}: use a smaller set"
            )
    labels, class_names = _labels(root, found)
    records = []
    for (path, relpath, digest, entry), label in zip(found, labels, strict=True):
        caption, variants = captions_from(entry, path.with_suffix(".txt"))
        records.append(ImageRecord(path, relpath, digest, caption, label, variants))
    return ImageDataset(root=root, records=records, skipped=skipped, class_names=class_names)


def _labels(
    root: Path, found: list[tuple[Path, str, str, dict[str, Any] | None]]
) -> tuple[list[int | None], list[str] | None]:
    manifest_labels = [entry.get("label") if entry else None for *_, entry in found]
    if found and all(isinstance(label, int) and not isinstance(label, bool) for label in manifest_labels):
        return list(manifest_labels), None
    folders = [PurePosixPath(relpath).parts for _, relpath, _, _ in found]
    if found and all(len(parts) == 2 for parts in folders):
        class_names = sorted({parts[0] for parts in folders})
        index = {name: i for i, name in enumerate(class_names)}
        return [index[parts[0]] for parts in folders], class_names
    return [None] * len(found), None


def extract_zip_safely(
    archive: Path, dest: Path, max_entries: int = MAX_ZIP_ENTRIES, max_bytes: int = MAX_ZIP_BYTES
) -> Path:
    """Extract `archive` into `dest` (created atomically), refusing path traversal, links and zip bombs."""
    archive, dest = Path(archive), Path(dest)
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{archive} is not a readable zip archive ({exc})") from exc
    with bundle:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        if len(members) > max_entries:
            raise DatasetError(f"{archive} has {len(members)} files; at most {max_entries} are accepted")
        if sum(info.file_size for info in members) > max_bytes:
            raise DatasetError(
                f"{archive} unpacks to more than {max_bytes // 2**20} MiB; use a smaller archive"
            )
        targets = []
        for info in members:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or ":" in info.filename:
                raise DatasetError(
                    f"{archive} contains an unsafe path {info.filename!r}; refusing to extract it"
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DatasetError(
                    f"{archive} contains a symbolic link {info.filename!r}; refusing to extract it"
                )
            targets.append((info, name))

        def write(tmp: str) -> None:
            written = 0
            for info, name in targets:
                out = Path(tmp, *name.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as src, open(out, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:  # headers can lie about sizes
                            raise DatasetError(f"{archive} unpacks to more than {max_bytes // 2**20} MiB")
                        dst.write(chunk)

        try:
            return write_directory_atomically(dest, write, overwrite=True)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise DatasetError(f"{archive} is corrupt ({exc})") from exc


def open_image_dataset(
    source: Path,
    *,
    min_images: int = 1,
    max_images: int | None = None,
    extract_dir: Path | None = None,
) -> ImageDataset:
    """A dataset from a folder or a zip (extracted into `extract_dir`), checked against the image limits."""
    source = Path(source)
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise DatasetError(f"{source} is a file but not a zip archive: pass a folder of images or a .zip")
        if extract_dir is None:
            raise DatasetError("a zip dataset needs a folder to be extracted into")
        source = extract_zip_safely(source, extract_dir)
    dataset = scan_image_folder(source, max_images=max_images)
    if len(dataset) < min_images:
        detail = (
            f" ({len(dataset.skipped)} files skipped, e.g. {dataset.skipped[0].relpath}: "
            f"{dataset.skipped[0].reason})"
            if dataset.skipped
            else ""
        )
        raise DatasetError(
            f"{source} has {len(dataset)} usable images{detail}; at least {min_images} are needed"
        )
    return dataset
