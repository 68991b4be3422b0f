"""`fae models pull`: copy a model directory from object storage, an HTTPS server or a path, verified.

The source holds a model directory and its `fae-manifest.json` (`fae models manifest DIR` writes it). A pull
fetches the manifest first, then every file it lists into a staging directory beside the target
(`.NAME.partial-<fingerprint>`), checks each file's size and SHA-256, and renames the finished directory into
place in one step, so a worker never sees a half-written model. An interrupted pull resumes: files already
verified in the staging directory are kept, a partly written one continues from its last byte (a ranged
read). A file whose bytes do not match is refused with the path and both hashes, and nothing is moved in.
Concurrent pulls of the same target (several pods' init containers on one shared volume) take a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.manifests import (
    MANIFEST_NAME,
    ChecksumMismatch,
    FileEntry,
    Manifest,
    ManifestError,
    model_files,
    read_manifest,
    verify_directory,
)
from core.settings import Settings

log = logging.getLogger(__name__)

# Read size: what an interrupted download can lose at most, and what one read holds in memory.
_CHUNK = 1024 * 1024


class ModelSource(Protocol):
    """Where a model directory is read from: its manifest, and any file from a byte offset on."""

    def __str__(self) -> str: ...

    def read_manifest(self) -> bytes:
        """The manifest's bytes; FileNotFoundError when the source has none."""

    def iter_file(self, relative: str, start: int) -> Iterator[bytes]:
        """The file's bytes from offset `start` on; FileNotFoundError when missing."""


class PathSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def read_manifest(self) -> bytes:
        return (self.root / MANIFEST_NAME).read_bytes()

    def iter_file(self, relative: str, start: int) -> Iterator[bytes]:
        with open(self.root / relative, "rb") as f:
            f.seek(start)
            while chunk := f.read(_CHUNK):
                yield chunk


class S3Source:
    """`s3://bucket/prefix`, read with the FAE_S3_* endpoint, region and credentials."""

    def __init__(self, url: str, settings: Settings) -> None:
        from core.storage import S3Storage

        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"model source {url!r} names no bucket: use s3://bucket/prefix")
        self.url, self.prefix = url.rstrip("/"), parts.path.strip("/")
        self.storage = S3Storage(settings.storage.model_copy(update={"s3_bucket": parts.netloc}))

    def __str__(self) -> str:
        return self.url

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def read_manifest(self) -> bytes:
        return self.storage.get_bytes(self._key(MANIFEST_NAME))

    def iter_file(self, relative: str, start: int) -> Iterator[bytes]:
        return self.storage.iter_bytes(self._key(relative), start, _CHUNK)


class HttpSource:
    """An HTTPS base URL: the manifest at BASE/fae-manifest.json, each file at BASE/<path> (Range resumes)."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        hooks = {"response": [refuse_downgrade]}
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=True, event_hooks=hooks)

    def __str__(self) -> str:
        return self.url

    def _get(self, relative: str, start: int = 0):  # -> httpx response context manager
        headers = {"Range": f"bytes={start}-"} if start else {}
        return self.client.stream("GET", f"{self.url}/{relative}", headers=headers)

    def read_manifest(self) -> bytes:
        with self._get(MANIFEST_NAME) as response:
            if response.status_code == 404:
                raise FileNotFoundError(f"{self.url}/{MANIFEST_NAME}")
            response.raise_for_status()
            return response.read()

    def iter_file(self, relative: str, start: int) -> Iterator[bytes]:
        with self._get(relative, start) as response:
            if response.status_code == 404:
                raise FileNotFoundError(f"{self.url}/{relative}")
            response.raise_for_status()
            skip = start if response.status_code == 200 else 0  # the server ignored Range: drop what we have
            for chunk in response.iter_bytes():  # as it arrives: a killed pull keeps what reached the disk
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if chunk:
                    yield chunk


def refuse_downgrade(response: Any) -> None:
    """An `httpx` response hook: a redirect from `https://` to anything else is refused, not followed (a model
    pulled over HTTPS stays on HTTPS even when a mirror or a man in the middle says otherwise)."""
    if not response.is_redirect or response.request.url.scheme != "https":
        return
    target = response.request.url.join(response.headers.get("location", ""))
    if target.scheme != "https":
        raise ValueError(
            f"refusing a redirect from {response.request.url} to {target}: a pull over HTTPS stays on it"
        )


def open_source(source: str, settings: Settings) -> ModelSource:
    """`s3://bucket/prefix`, `https://host/path` (or `http://`), or a local directory (also `file://`)."""
    scheme = urlsplit(source).scheme
    if scheme == "s3":
        return S3Source(source, settings)
    if scheme in ("https", "http"):
        return HttpSource(source)
    path = Path(source.removeprefix("file://")).expanduser()
    if scheme not in ("", "file") or not path.is_dir():
        raise ValueError(f"model source {source!r} is not s3://bucket/prefix, an https:// URL or a directory")
    return PathSource(path)


@dataclass(frozen=True)
class PullResult:
    target: Path
    manifest: Manifest
    status: str  # "pulled" (moved into place now) or "present" (already there, same fingerprint)
    downloaded_bytes: int = 0
    reused_files: int = 0


def staging_dir(target: Path, fingerprint: str) -> Path:
    """Named by the content it will hold: a resumed pull of the same model finds it, another model does not."""
    return target.parent / f".{target.name}.partial-{fingerprint[:16]}"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One pull of a target at a time (pods sharing a volume). A filesystem without locks (some NFS mounts)
    pulls unlocked: the rename still keeps readers safe, and interleaved writes would fail verification."""
    with open(target.parent / f".{target.name}.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as exc:
            log.warning(
                "no file lock on this volume (%s): pulling unlocked", exc, extra={"target": str(target)}
            )
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pull_model(
    source: ModelSource,
    target: Path,
    *,
    expect_fingerprint: str | None = None,
    verify_existing: bool = False,
    replace: bool = False,
) -> PullResult:
    """Pull `source` into `target` (see the module docstring); ManifestError/ChecksumMismatch on bad content."""
    target = Path(target).absolute()
    try:
        raw = source.read_manifest()
    except FileNotFoundError as exc:
        raise ManifestError(
            f"{source} has no {MANIFEST_NAME}: write one with `fae models manifest DIR` before uploading the model"
        ) from exc
    manifest = Manifest.from_json(raw, f"{source}/{MANIFEST_NAME}")
    fingerprint = manifest.fingerprint
    if expect_fingerprint is not None:
        expected = expect_fingerprint.removeprefix("sha256:").lower()
        if len(expected) < 12 or any(c not in "0123456789abcdef" for c in expected):
            raise ManifestError(
                f"expected fingerprint {expect_fingerprint!r} is not a fingerprint: give at least 12 hex digits"
            )
        if not fingerprint.startswith(expected):
            raise ManifestError(
                f"{source} has fingerprint {fingerprint}, not the expected {expect_fingerprint}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        if target.exists():
            present = read_manifest(target) if (target / MANIFEST_NAME).is_file() else None
            if present is not None and present.fingerprint == fingerprint:
                if verify_existing:
                    verify_directory(target, present)
                log.info("model already present", extra={"target": str(target), "fingerprint": fingerprint})
                return PullResult(target, manifest, "present")
            if not replace:
                raise FileExistsError(
                    f"{target} already holds another model (fingerprint "
                    f"{present.fingerprint if present else 'unknown'}): pull each version into its own "
                    "directory (e.g. /models/NAME-VERSION), or pass --replace"
                )
        staging = staging_dir(target, fingerprint)
        for stale in target.parent.glob(f".{target.name}.partial-*"):
            if stale != staging:  # a pull of other content: its files cannot be reused
                shutil.rmtree(stale, ignore_errors=True)
        downloaded, reused = 0, 0
        for relative, entry in sorted(manifest.files.items()):
            fetched = _fetch_verified(source, relative, entry, staging / relative)
            downloaded += fetched
            reused += fetched == 0 and entry.size > 0
        for relative in _unlisted(staging, manifest):
            (staging / relative).unlink()
        (staging / MANIFEST_NAME).write_bytes(raw)
        missing = [ref for ref in manifest.references if not Path(ref).exists()]
        if missing:
            raise ManifestError(
                f"{source} needs {', '.join(missing)} (encoder or text-encoder weights outside the model): "
                "pull those first (each is its own source with its own manifest); the model stays staged"
            )
        _move_into_place(staging, target)
    log.info(
        "model pulled",
        extra={
            "target": str(target),
            "fingerprint": fingerprint,
            "bytes": downloaded,
            "reused_files": reused,
        },
    )
    return PullResult(target, manifest, "pulled", downloaded, reused)


def _fetch_verified(source: ModelSource, relative: str, entry: FileEntry, path: Path) -> int:
    """Make `path` hold the file's verified bytes, keeping what an earlier attempt wrote; bytes downloaded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    have = path.stat().st_size if path.is_file() else 0
    if have > entry.size:
        path.unlink()
        have = 0
    digest = hashlib.sha256()
    if have:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if have == entry.size and digest.hexdigest() == entry.sha256:
            return 0  # verified by an earlier attempt
        if have == entry.size:  # complete but wrong: nothing to resume
            path.unlink()
            have, digest = 0, hashlib.sha256()
    downloaded = 0
    for attempt_from in (have, 0) if have else (0,):
        if attempt_from == 0 and have:
            path.unlink()  # what was there was not a prefix of this file: start over once
            digest = hashlib.sha256()
        downloaded += _append(source, relative, entry, path, attempt_from, digest)
        if digest.hexdigest() == entry.sha256 and path.stat().st_size == entry.size:
            return downloaded
    actual, size = digest.hexdigest(), path.stat().st_size
    path.unlink()
    raise ChecksumMismatch(
        f"{source}/{relative} does not match its manifest ({size} bytes, sha256 {actual}; expected "
        f"{entry.size} bytes, sha256 {entry.sha256}): refusing it, nothing was moved into place"
    )


def _append(source: ModelSource, relative: str, entry: FileEntry, path: Path, start: int, digest: Any) -> int:
    """Append the file's bytes from `start` on to `path`, feeding `digest`; bytes written."""
    written = 0
    with open(path, "ab") as f:
        for chunk in source.iter_file(relative, start):
            # Longer than the manifest says: stop one byte past it (a mismatch), never fill the disk.
            if start + written + len(chunk) > entry.size:
                chunk = chunk[: entry.size - start - written + 1]
                f.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                break
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return written


def _unlisted(staging: Path, manifest: Manifest) -> list[str]:
    return [rel for rel in model_files(staging) if rel not in manifest.files]


def _move_into_place(staging: Path, target: Path) -> None:
    """One rename: readers see no model or the whole model. A replaced model is renamed aside, then removed."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}" if target.exists() else None
    if old is not None:
        os.rename(target, old)
    os.rename(staging, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
