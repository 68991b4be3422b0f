"""A fine-tune's checkpoints mirrored to real SeaweedFS: a redelivery on another host (another scratch
directory) restores the complete ones, never one whose upload was cut short; pruned ones are pruned there too."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.contract import checkpoints_key
from core.settings import Settings
from core.storage import S3Storage
from worker.checkpoints import COMPLETE, CheckpointMirror

pytestmark = pytest.mark.services


def write_checkpoint(directory: Path, step: int) -> None:
    (directory / f"step-{step:09d}").mkdir(parents=True)
    (directory / f"step-{step:09d}" / "state.pt").write_bytes(f"state {step}".encode())


def test_checkpoints_follow_the_job_to_another_host(s3_server, s3_bucket, tmp_path: Path) -> None:
    storage = S3Storage(Settings().override(**s3_server.settings_fields(s3_bucket)).storage)
    prefix = checkpoints_key("acme", "job1")
    first_host = tmp_path / "host-a" / "checkpoints"
    mirror = CheckpointMirror(storage, prefix, first_host, retry_s=5)
    assert mirror.restore() == []
    write_checkpoint(first_host, 100)
    write_checkpoint(first_host, 200)
    mirror.sync()
    (first_host / "step-000000100" / "state.pt").unlink()  # the trainer keeps the newest only
    (first_host / "step-000000100").rmdir()
    mirror.sync()
    assert storage.list(prefix) == [f"{prefix}step-000000200/{COMPLETE}", f"{prefix}step-000000200/state.pt"]
    # A pod died while uploading step 300: its files are there, its marker is not.
    storage.put_bytes(f"{prefix}step-000000300/state.pt", b"half")
    second_host = tmp_path / "host-b" / "checkpoints"
    assert CheckpointMirror(storage, prefix, second_host, retry_s=5).restore() == ["step-000000200"]
    assert (second_host / "step-000000200" / "state.pt").read_bytes() == b"state 200"
    assert not (second_host / "step-000000300").exists()
    mirror.clear()
    assert storage.list(prefix) == []
