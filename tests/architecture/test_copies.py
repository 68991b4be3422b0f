"""Code duplicated on purpose across a package boundary (marked `# Copied from` / `# Copied to`) stays equal.

`model/` imports nothing of ours, so the one helper it shares with `core/` is a marked copy, as diffusers does
with its `# Copied from` convention and `utils/check_copies.py`."""

from __future__ import annotations

import inspect

import core.atomic
import model.io


def test_atomic_writer_copy_is_identical() -> None:
    original = inspect.getsource(core.atomic.write_bytes_atomically)
    copy = inspect.getsource(model.io.write_bytes_atomically)
    assert copy == original, "core/atomic.py and model/io.py write_bytes_atomically differ: change both"


def test_copies_are_marked_on_both_sides() -> None:
    assert "Copied to model/io.py" in inspect.getsource(core.atomic)
    assert "Copied from core/atomic.py" in inspect.getsource(model.io)
