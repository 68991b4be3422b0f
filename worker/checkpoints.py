"""A fine-tune's checkpoints mirrored to object storage, so a redelivery on any host resumes where training got
to (the worker's scratch directory is an `emptyDir` that dies with its pod).

The trainer writes each checkpoint as a `step-*` directory that appears complete (renamed into place). A mirror
uploads each new one, then a `_complete` marker; a restore takes only marked ones, so an upload cut short by a
dying pod is never resumed from. Checkpoints the trainer pruned are pruned here too.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.storage import Storage, retry_storage

log = logging.getLogger(__name__)

COMPLETE = "_complete"
_STEP_PREFIX = "step-"


class CheckpointMirror:
    def __init__(self, storage: Storage, prefix: str, local_dir: Path, retry_s: float) -> None:
        self.storage, self.prefix, self.local_dir, self.retry_s = storage, prefix, Path(local_dir), retry_s
        self._mirrored: set[str] = set()

    def restore(self) -> list[str]:
        """Download the complete checkpoints in storage into `local_dir`; their names."""
        keys = self.storage.list(self.prefix)
        complete = sorted(
            {key[len(self.prefix) :].split("/")[0] for key in keys if key.endswith("/" + COMPLETE)}
        )
        for name in complete:
            self.storage.download_prefix(f"{self.prefix}{name}/", self.local_dir / name)
        self._mirrored = set(complete)
        if complete:
            log.info("fine-tune checkpoints restored from storage", extra={"checkpoints": complete})
        return complete

    def sync(self) -> None:
        """Upload new local checkpoints (marker last) and drop the ones the trainer pruned."""
        local = {p.name for p in self.local_dir.glob(_STEP_PREFIX + "*") if p.is_dir()}
        for name in sorted(local - self._mirrored):
            directory = self.local_dir / name
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                key = f"{self.prefix}{name}/{path.relative_to(directory).as_posix()}"
                retry_storage(lambda: self.storage.put_file(key, path), self.retry_s)  # noqa: B023 (called at once)
            self.storage.put_bytes(f"{self.prefix}{name}/{COMPLETE}", b"")
            self._mirrored.add(name)
        for name in sorted(self._mirrored - local):
            self.storage.delete_prefix(f"{self.prefix}{name}/")
            self._mirrored.discard(name)

    def clear(self) -> None:
        self.storage.delete_prefix(self.prefix)
        self._mirrored.clear()
