"""A fine-tune's dataset as multipart file parts, and a request body that reports upload progress."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import httpx

# `progress(sent_bytes, total_bytes)`, called as the body goes out (again from 0 on a retry).
ProgressHook = Callable[[int, int], None]
# What `finetunes.create(files=...)` takes: a directory, a zip or image path, or a list of paths or
# (filename, bytes or binary file) pairs.
DatasetFile = str | os.PathLike[str] | tuple[str, bytes | IO[bytes]]
Dataset = str | os.PathLike[str] | Sequence[DatasetFile]

# What the server accepts in a dataset (images, captions, zip archives); a directory contributes only these.
DATASET_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".txt", ".zip"})


def dataset_paths(directory: Path) -> list[Path]:
    """A directory's dataset files (recursively, sorted; hidden files left out)."""
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and path.suffix.lower() in DATASET_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    )


def open_dataset(files: Dataset) -> list[tuple[str, IO[bytes] | bytes, str]]:
    """(filename, content, content type) per file; files opened here are closed by `close_dataset`."""
    if isinstance(files, str | os.PathLike):
        path = Path(files)
        if path.is_dir():
            found = dataset_paths(path)
            if not found:
                raise ValueError(f"{path} holds no images, captions or zip archives")
            items: Sequence[DatasetFile] = found
        else:
            items = [path]
    else:
        items = files
    if not items:
        raise ValueError("files is empty: give images, captions or a zip archive")
    parts: list[tuple[str, IO[bytes] | bytes, str]] = []
    try:
        for item in items:
            if isinstance(item, tuple):
                name, content = item
                parts.append((name, content, _content_type(name)))
            else:
                path = Path(item)
                parts.append((path.name, path.open("rb"), _content_type(path.name)))
    except BaseException:
        close_dataset(parts)
        raise
    return parts


def close_dataset(parts: list[tuple[str, IO[bytes] | bytes, str]]) -> None:
    for _, content, _ in parts:
        if not isinstance(content, bytes):
            content.close()


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class ProgressStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Wraps a request body (httpx's multipart stream: rewinds its files on every pass) and reports each
    chunk sent to `hook`, for the sync and the async transport alike."""

    def __init__(self, inner: httpx.SyncByteStream, total: int, hook: ProgressHook) -> None:
        self.inner, self.total, self.hook = inner, total, hook

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        self.hook(0, self.total)
        for chunk in self.inner:
            sent += len(chunk)
            self.hook(sent, self.total)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:  # the multipart stream reads local files: no awaiting to do
            yield chunk


def with_progress(request: httpx.Request, hook: ProgressHook | None) -> httpx.Request:
    if hook is not None:
        total = int(request.headers.get("content-length", "0"))
        request.stream = ProgressStream(request.stream, total, hook)  # type: ignore[arg-type]
    return request


# An input image (image-to-image, embeddings): a path or bytes (sent as a file part), or a string that is a
# `data:image/...;base64,` URI or a key under your `tenants/<tenant>/` storage prefix (sent as JSON).
ImageInput = str | os.PathLike[str] | bytes


def image_upload(image: ImageInput | None) -> tuple[str, bytes, str] | None:
    """The file part for a path or bytes; None for nothing, a data URI or a storage key (sent as they are)."""
    if image is None:
        return None
    if isinstance(image, bytes):
        return ("image", image, "application/octet-stream")
    if isinstance(image, str) and (image.startswith("data:") or image.startswith("tenants/")):
        return None
    path = Path(image)
    return (path.name, path.read_bytes(), _content_type(path.name))


def form_fields(fields: dict[str, object]) -> dict[str, str]:
    """Request fields as multipart form text: JSON for lists and objects, lowercase booleans, None left out."""
    import json

    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            out[name] = json.dumps(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out
