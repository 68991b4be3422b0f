"""Input images stored for a job: a write that fails part-way leaves none of the job's inputs behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.storage import LocalStorage
from service.input_images import store_inputs


class FailsOnSecondWrite(LocalStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.writes += 1
        if self.writes == 2:
            raise OSError("disk full")
        super().put_bytes(key, data, content_type)


def test_a_failed_write_deletes_the_inputs_already_stored(tmp_path: Path) -> None:
    storage = FailsOnSecondWrite(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        store_inputs(storage, "acme", "job-1", [(b"one", "png"), (b"two", "png"), (b"three", "png")])
    assert storage.writes == 2 and storage.list("tenants/acme/") == []
    keys = store_inputs(LocalStorage(tmp_path), "acme", "job-2", [(b"one", "png"), (b"two", "jpg")])
    assert storage.list("tenants/acme/") == sorted(keys) and len(keys) == 2
