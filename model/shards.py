"""Sharded image datasets for paper-scale training: tar archives read front to back, never seeked.

`pack_shards` turns a dataset folder (see `model.data`) into `<out>/shard-000000.tar, ...` plus `index.json`.
Each shard holds, per image, the original file bytes as `<key>.<ext>` (decoded exactly as the folder's file
would be) and `<key>.json` with its relative path, captions and label; `index.json` lists the shards, their
image counts and every image's [relpath, sha256], so that a sharded dataset has the same fingerprint as the
folder it was packed from (and shares its feature/latent cache entries), plus captions and labels for
stage II. `ShardedDataset` reads it: `iter_shard` streams one shard, `batches` the whole set in order (what
the feature and latent caches need), `open_training_dataset` picks folder or shards by format.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from .data import ImageDataset, image_to_tensor, open_image_dataset, scan_image_folder
from .errors import DatasetError
from .fingerprint import json_fingerprint
from .io import write_directory_atomically

INDEX_NAME = "index.json"
SHARD_FORMAT = "fae-shards/1"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    count: int


@dataclass
class ShardedDataset:
    root: Path
    shards: list[ShardInfo]
    files: list[tuple[str, str]]  # [relpath, sha256] of every image, shard by shard
    captions_: list[tuple[str, ...]]
    labels_: list[int | None]
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shard_sizes(self) -> list[int]:
        return [shard.count for shard in self.shards]

    def fingerprint(self) -> str:
        """Equal to `ImageDataset.fingerprint` of the folder it was packed from."""
        return json_fingerprint([list(pair) for pair in self.files])

    def caption_choices(self) -> list[tuple[str, ...]]:
        return [choices or ("",) for choices in self.captions_]

    def captions(self) -> list[str]:
        return [choices[0] if choices else "" for choices in self.captions_]

    def labels(self) -> list[int] | None:
        if any(label is None for label in self.labels_):
            return None
        return [int(label) for label in self.labels_ if label is not None]

    def report(self, max_listed: int = 50) -> dict[str, Any]:
        return {
            "num_images": len(self),
            "num_skipped": 0,
            "skipped": [],
            "num_captioned": sum(1 for choices in self.captions_ if choices and choices[0]),
            "num_shards": len(self.shards),
        }

    def iter_shard(self, shard: int, size: int) -> Iterator[torch.Tensor]:
        """The images of shard `shard` in stored order, uint8 3×size×size, read sequentially."""
        info = self.shards[shard]
        path = self.root / info.name
        count = 0
        try:
            with tarfile.open(path, mode="r|") as archive:  # stream mode: no seeks, works on pipes
                for member in archive:
                    if not member.isfile() or member.name.endswith(".json"):
                        continue
                    data = archive.extractfile(member).read()
                    with PIL.Image.open(io.BytesIO(data)) as image:
                        yield image_to_tensor(image, size)
                    count += 1
        except (OSError, tarfile.TarError, PIL.UnidentifiedImageError) as exc:
            raise DatasetError(f"shard {path} could not be read ({exc}); was the dataset changed?") from exc
        if count != info.count:
            raise DatasetError(f"shard {path} holds {count} images, its index says {info.count}")

    def batches(self, size: int, batch_size: int) -> Iterator[torch.Tensor]:
        """All images in order as uint8 batches B×3×size×size (one pass over every shard)."""
        pending: list[torch.Tensor] = []
        for shard in range(len(self.shards)):
            for image in self.iter_shard(shard, size):
                pending.append(image)
                if len(pending) == batch_size:
                    yield torch.stack(pending)
                    pending = []
        if pending:
            yield torch.stack(pending)


def is_sharded(path: Path) -> bool:
    index = Path(path) / INDEX_NAME
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == SHARD_FORMAT


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_index(index: dict[str, Any]) -> tuple[list[ShardInfo], list[dict[str, Any]], list[str] | None]:
    """(shards, image entries, class names) of a parsed index; KeyError or TypeError where it is malformed."""
    shards_field, images, class_names = index["shards"], index["images"], index.get("class_names")
    if not isinstance(shards_field, list) or not isinstance(images, list):
        raise TypeError("'shards' and 'images' must be lists")
    shards = []
    for shard in shards_field:
        name, count = shard["name"], shard["count"]
        if not isinstance(name, str) or not _is_int(count) or count < 0:
            raise TypeError(f"shard entry {shard!r} needs a string 'name' and a non-negative integer 'count'")
        shards.append(ShardInfo(name, count))
    for entry in images:
        file, digest = entry["file"], entry["sha256"]
        captions, label = entry.get("captions", []), entry.get("label")
        if not isinstance(file, str) or not isinstance(digest, str):
            raise TypeError(f"image entry {entry!r:.200} needs string 'file' and 'sha256'")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"image entry {file!r}: 'captions' must be a list of strings")
        if label is not None and not _is_int(label):
            raise TypeError(f"image entry {file!r}: 'label' must be an integer or null")
    if class_names is not None and (
        not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names)
    ):
        raise TypeError("'class_names' must be a list of strings or null")
    return shards, images, class_names


def open_sharded_dataset(root: Path) -> ShardedDataset:
    root = Path(root)
    index_path = root / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{index_path} is not a readable shard index ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        raise DatasetError(f"{index_path} is not a {SHARD_FORMAT} index")
    try:
        shards, images, class_names = _parse_index(index)
    except KeyError as exc:
        raise DatasetError(f"{index_path} is not a valid {SHARD_FORMAT} index: missing key {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{index_path} is not a valid {SHARD_FORMAT} index: {exc}") from exc
    for shard in shards:
        if Path(shard.name).name != shard.name or not (root / shard.name).is_file():
            raise DatasetError(f"shard {shard.name!r} listed in {index_path} is missing")
    if len(images) != sum(s.count for s in shards):
        raise DatasetError(f"{index_path}: {len(images)} images listed, shards hold another count")
    return ShardedDataset(
        root=root,
        shards=shards,
        files=[(entry["file"], entry["sha256"]) for entry in images],
        captions_=[tuple(entry.get("captions", ())) for entry in images],
        labels_=[entry.get("label") for entry in images],
        class_names=class_names,
    )


def open_training_dataset(
    source: Path, *, min_images: int = 1, extract_dir: Path | None = None
) -> ImageDataset | ShardedDataset:
    """A folder of shards (detected by its index.json), else a folder or zip of images."""
    if is_sharded(source):
        dataset = open_sharded_dataset(source)
        if len(dataset) < min_images:
            raise DatasetError(f"{source} has {len(dataset)} images; at least {min_images} are needed")
        return dataset
    return open_image_dataset(source, min_images=min_images, extract_dir=extract_dir)


def pack_shards(source: Path, out_dir: Path, images_per_shard: int = 1000) -> ShardedDataset:
    """Pack the usable images of folder `source` (in the folder's sorted order) into tar shards at `out_dir`."""
    if images_per_shard < 1:
        raise DatasetError("images per shard must be at least 1")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir} exists and is not empty: choose another output folder")
    dataset = scan_image_folder(Path(source))
    if len(dataset) == 0:
        raise DatasetError(f"{source} has no usable images")
    entries: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []

    def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible archives
        archive.addfile(info, io.BytesIO(data))

    def write(tmp: str) -> None:
        records = dataset.records
        for number, start in enumerate(range(0, len(records), images_per_shard)):
            name = f"shard-{number:06d}.tar"
            chunk = records[start : start + images_per_shard]
            with tarfile.open(Path(tmp, name), "w", format=tarfile.PAX_FORMAT) as archive:
                for offset, record in enumerate(chunk):
                    key = f"{start + offset:09d}"
                    captions = [c for c in (record.caption, *record.caption_variants) if c]
                    meta = {"file": record.relpath, "captions": captions, "label": record.label}
                    add(archive, f"{key}{record.path.suffix.lower()}", record.path.read_bytes())
                    add(archive, f"{key}.json", json.dumps(meta).encode())
                    entries.append({**meta, "sha256": record.sha256})
            shards.append({"name": name, "count": len(chunk)})
        index = {
            "format": SHARD_FORMAT,
            "num_images": len(entries),
            "shards": shards,
            "class_names": dataset.class_names,
            "images": entries,
        }
        Path(tmp, INDEX_NAME).write_text(json.dumps(index))

    write_directory_atomically(out_dir, write)
    return open_sharded_dataset(out_dir)
