"""Checkpoints of a training task: `<dir>/step-000000100/{state.pt, meta.json}`, written atomically.

A checkpoint directory only ever appears complete (it is written under a temporary name and renamed), so the
newest `step-*` directory is always loadable; older ones beyond `keep` are removed after a new one lands.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from ..io import write_directory_atomically

CHECKPOINT_FORMAT = 1
_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:09d}"


class CheckpointStore:
    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if (
                path.name.startswith(_PREFIX)
                and (path / "meta.json").is_file()
                and (path / "state.pt").is_file()
            ):
                try:
                    found.append(int(path.name[len(_PREFIX) :]))
                except ValueError:
                    continue
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict[str, Any], fingerprint: dict[str, Any]) -> Path:
        buffer = io.BytesIO()
        torch.save(
            {"format": CHECKPOINT_FORMAT, "step": step, "fingerprint": fingerprint, "state": state}, buffer
        )

        def write(tmp: str) -> None:
            Path(tmp, "state.pt").write_bytes(buffer.getbuffer())
            meta = {
                "step": step,
                "format": CHECKPOINT_FORMAT,
                "saved_at": time.time(),
                "fingerprint": fingerprint,
            }
            Path(tmp, "meta.json").write_text(json.dumps(meta, indent=2, default=str))

        path = write_directory_atomically(self.directory / checkpoint_name(step), write, overwrite=True)
        self._prune()
        return path

    def load(
        self, step: int, fingerprint: dict[str, Any], map_location: torch.device | str = "cpu"
    ) -> dict[str, Any]:
        """The task state saved at `step`; refuses a checkpoint made with other settings or data."""
        path = self.directory / checkpoint_name(step) / "state.pt"
        payload = torch.load(path, map_location=map_location, weights_only=True)
        saved = payload.get("fingerprint", {})
        if json.dumps(saved, sort_keys=True, default=str) != json.dumps(
            fingerprint, sort_keys=True, default=str
        ):
            differences = sorted(
                k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
            )
            raise InvalidInputError(
                f"the checkpoint in {path.parent} was made with different settings or data "
                f"({', '.join(differences)} differ); resume with the same settings, or use a new output directory"
            )
        return payload["state"]

    def _prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            path = self.directory / checkpoint_name(step)
            doomed = path.with_name(f".{path.name}.deleting")
            path.rename(doomed)  # gone from steps() at once, even if the removal below is interrupted
            shutil.rmtree(doomed, ignore_errors=True)

    def remove_stale_temporaries(self) -> None:
        """Leftovers of a run killed while writing (`.step-*.tmp`) or pruning (`.step-*.deleting`)."""
        if self.directory.is_dir():
            for path in self.directory.glob(f".{_PREFIX}*"):
                shutil.rmtree(path, ignore_errors=True)
