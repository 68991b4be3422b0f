"""The worker's scratch space: storage prefixes (adapters, datasets) fetched to local disk."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from core.settings import Settings
from core.storage import Storage

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def scratch_root(settings: Settings) -> Path:
    root = settings.worker.scratch_dir or Path(settings.process.data_dir) / "worker"
    root.mkdir(parents=True, exist_ok=True)
    return root


def scratch_path(settings: Settings, *parts: str) -> Path:
    """``<scratch>/<parts...>`` with every part made safe as one path component."""
    return scratch_root(settings).joinpath(*(_UNSAFE.sub("_", part) for part in parts))


def fetch_prefix(storage: Storage, prefix: str, settings: Settings, *parts: str) -> Path:
    """Download ``prefix`` to ``<scratch>/<parts...>`` once; later calls reuse the copy.

    The download lands in a temporary directory that is renamed into place, so a crash never leaves a
    half-fetched copy that a later job would trust.
    """
    target = scratch_path(settings, *parts)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        storage.download_prefix(prefix, staging)
        try:
            staging.rename(target)
        except OSError:  # another job fetched it first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
