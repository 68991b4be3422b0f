"""Model manifests: every file of a model directory with its SHA-256 and size, a version, and a fingerprint.

`fae models manifest DIR` writes `fae-manifest.json` into a model directory; `fae models pull` checks every
file it downloads against it, and the gateway and the workers read a model's version and fingerprint from it.
The fingerprint is the SHA-256 of the sorted (path, sha256, size) list: two directories with the same bytes
have the same fingerprint, whatever their version label says. Torch-free: the gateway imports this.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from core.atomic import write_bytes_atomically

MANIFEST_NAME = "fae-manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 8 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or does not match the files it describes."""


class ChecksumMismatch(ManifestError):
    """A file whose bytes are not the ones the manifest names (tampered, truncated or corrupted)."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    files: dict[str, FileEntry]
    version: str | None = None
    # Absolute directories the model's component configs name (external encoder or text-encoder weights).
    references: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(b"fae-model-fingerprint-v1\n")
        for path in sorted(self.files):
            entry = self.files[path]
            digest.update(f"{path}\0{entry.sha256}\0{entry.size}\n".encode())
        return digest.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "references": list(self.references),
            "files": {p: {"sha256": e.sha256, "size": e.size} for p, e in sorted(self.files.items())},
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes | str, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
                raise ManifestError(f"{where}: not an fae manifest of format {MANIFEST_FORMAT}")
            files = {
                check_relative_path(path): FileEntry(str(entry["sha256"]).lower(), int(entry["size"]))
                for path, entry in data["files"].items()
            }
            version = data.get("version")
            manifest = cls(
                files, str(version) if version is not None else None, tuple(data.get("references", []))
            )
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{where}: malformed manifest ({exc})") from exc
        for path, entry in manifest.files.items():
            if (
                len(entry.sha256) != 64
                or any(c not in "0123456789abcdef" for c in entry.sha256)
                or entry.size < 0
            ):
                raise ManifestError(f"{where}: bad sha256 or size for {path!r}")
        stated = data.get("fingerprint")
        if stated is not None and stated != manifest.fingerprint:
            raise ManifestError(f"{where}: its fingerprint does not match its file list (edited by hand?)")
        return manifest


def check_relative_path(path: str) -> str:
    """A manifest path that stays inside the model directory (no absolute path, `..` or backslash)."""
    pure = PurePosixPath(path)
    if not path or "\\" in path or "\x00" in path or pure.is_absolute() or ".." in pure.parts:
        raise ManifestError(f"manifest path {path!r} would leave the model directory")
    if path == MANIFEST_NAME:
        raise ManifestError(f"a manifest cannot list itself ({path!r})")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(directory: Path) -> Iterator[str]:
    """Every regular file under `directory` (relative POSIX paths), the manifest itself and dot-files left out."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name == MANIFEST_NAME:
                continue
            yield Path(root, name).relative_to(directory).as_posix()


def external_references(directory: Path) -> tuple[str, ...]:
    """Absolute `path` values in the component configs: weights that live outside the model directory."""
    found: set[str] = set()
    for relative in model_files(directory):
        if not relative.endswith(".json") or "/" not in relative:
            continue
        try:
            config = json.loads((directory / relative).read_text())
        except (OSError, ValueError):
            continue
        values = [config.get("path")] + [v.get("path") for v in config.values() if isinstance(v, dict)]
        found |= {v for v in values if isinstance(v, str) and os.path.isabs(v)}
    return tuple(sorted(found))


def build_manifest(directory: Path, version: str | None = None) -> Manifest:
    directory = Path(directory)
    if not (directory / "model_index.json").is_file():
        raise ManifestError(f"{directory} has no model_index.json: it is not an FAE model repository")
    files = {
        rel: FileEntry(sha256_file(directory / rel), (directory / rel).stat().st_size)
        for rel in model_files(directory)
    }
    return Manifest(files, version, external_references(directory))


def write_manifest(directory: Path, version: str | None = None) -> Manifest:
    """Hash every file of a model directory and write `fae-manifest.json` beside them (atomically)."""
    manifest = build_manifest(directory, version)
    write_bytes_atomically(Path(directory) / MANIFEST_NAME, manifest.to_json())
    return manifest


def read_manifest(directory: Path) -> Manifest | None:
    path = Path(directory) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.from_json(raw, str(path))


def verify_file(path: Path, relative: str, entry: FileEntry) -> None:
    """Raise ChecksumMismatch unless the file has the manifest's size and SHA-256."""
    size = path.stat().st_size
    if size != entry.size:
        raise ChecksumMismatch(f"{relative}: {size} bytes, the manifest says {entry.size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ChecksumMismatch(f"{relative}: sha256 {actual}, the manifest says {entry.sha256}")


def verify_directory(directory: Path, manifest: Manifest | None = None) -> Manifest:
    """Check every file a directory's manifest lists (and that it lists every file there); the manifest."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    if manifest is None:
        raise ManifestError(f"{directory} has no {MANIFEST_NAME} (write one with `fae models manifest DIR`)")
    for relative, entry in manifest.files.items():
        path = directory / relative
        if not path.is_file():
            raise ChecksumMismatch(f"{relative}: missing from {directory}")
        verify_file(path, relative, entry)
    extra = sorted(set(model_files(directory)) - set(manifest.files))
    if extra:
        raise ChecksumMismatch(f"{directory} holds files its manifest does not list: {', '.join(extra[:5])}")
    return manifest


@dataclass(frozen=True)
class ModelIdentity:
    """What a model directory is: its version label (None when unlabelled) and its content fingerprint."""

    version: str | None
    fingerprint: str | None


_identities: dict[tuple[str, tuple[tuple[str, int, int], ...]], ModelIdentity] = {}
_identities_lock = threading.Lock()


def identify(directory: Path, version: str | None = None) -> ModelIdentity:
    """A directory's version (`version` if given, else its manifest's) and fingerprint (from its manifest, else
    by hashing its files once: cached while no file changes size or mtime). Unreadable: both None/`version`."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except (ManifestError, OSError):
        manifest = None
    if manifest is not None:
        return ModelIdentity(version or manifest.version, manifest.fingerprint)
    try:
        stats = tuple(
            (rel, (st := (directory / rel).stat()).st_size, st.st_mtime_ns) for rel in model_files(directory)
        )
    except OSError:
        return ModelIdentity(version, None)
    if not any(rel == "model_index.json" for rel, _, _ in stats):
        return ModelIdentity(version, None)
    key = (str(directory.resolve()), stats)
    with _identities_lock:
        cached = _identities.get(key)
    if cached is None:
        try:
            cached = ModelIdentity(None, build_manifest(directory).fingerprint)
        except (ManifestError, OSError):
            return ModelIdentity(version, None)
        with _identities_lock:
            _identities[key] = cached
    return ModelIdentity(version, cached.fingerprint)


def matches(reference: str, version: str | None, fingerprint: str | None) -> bool:
    """Whether `name@reference` names this model: its version label, its fingerprint, or a fingerprint prefix
    of at least 12 hex digits (`sha256:` allowed in front)."""
    ref = reference.removeprefix("sha256:").lower()
    if version is not None and reference == version:
        return True
    return fingerprint is not None and len(ref) >= 12 and fingerprint.startswith(ref)


def resolve_reference(reference: str, models: list[tuple[str, str, str | None, str | None]]) -> str | None:
    """The key of the model `reference` names among (key, name, version, fingerprint) rows; None when none
    matches. A plain `name` is the key itself (that name's current version); `name@ref` is the version whose
    label is `ref`, else the one whose fingerprint `ref` names (see `matches`)."""
    name, at, ref = reference.partition("@")
    if not at:
        return reference if any(key == reference for key, _, _, _ in models) else None
    candidates = [m for m in models if m[1] == name]
    for key, _, version, _ in candidates:
        if version is not None and ref == version:
            return key
    for key, _, _, fingerprint in candidates:
        if matches(ref, None, fingerprint):
            return key
    return None
