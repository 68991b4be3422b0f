"""Atomic file and directory writes: a failed write never leaves something that looks complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_directory_atomically(dest: Path, write: Callable[[str], object], overwrite: bool = False) -> Path:
    """Call `write(tmp_dir)`, then move the finished directory to `dest` in one rename.

    `dest` must not exist (or be an empty directory) unless `overwrite` is set, in which case the old
    directory is replaced only after the new one is complete.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} already exists and is not empty; choose another path or remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model or adapter directory is read by other users too
    try:
        write(str(tmp))
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# Copied from core/atomic.py (the model stack imports nothing of ours); tests/architecture/test_copies.py keeps the two equal.
def write_bytes_atomically(dest: Path, data: bytes) -> Path:
    """Write to a temporary file (mode 0600) in the same directory, fsync, then rename it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
