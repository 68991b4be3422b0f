"""`freeze_startup_objects`: garbage made at start-up is collected first, what is alive is frozen, and the
gauge says how much. (The deployed processes are checked in tests/service/test_gateway_workers.py and
tests/worker/test_celery_e2e.py, which run with the default `FAE_GC_FREEZE=true`.)"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from core import metrics
from core.heap import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """This test process builds many apps: what a test freezes goes back to the collector afterwards."""
    try:
        yield
    finally:
        gc.unfreeze()
        metrics.GC_FROZEN_OBJECTS.set(0)


def test_alive_objects_are_frozen_and_startup_garbage_is_not(unfrozen: None) -> None:
    kept = Node()
    garbage = Node()
    garbage.peer = Node()
    garbage.peer.peer = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    gc.disable()  # no automatic pass may collect the cycle before the call does
    try:
        assert gone() is not None
        frozen = freeze_startup_objects("test")
    finally:
        gc.enable()
    assert gone() is None  # collected before the freeze, so not kept for the life of the process
    assert frozen == gc.get_freeze_count() > 0
    # alive and tracked, yet in none of the collector's three generations: the permanent one
    assert gc.is_tracked(kept) and not any(o is kept for g in range(3) for o in gc.get_objects(g))
    assert f"fae_gc_frozen_objects {float(frozen)}" in metrics.render_latest()[0].decode()
    assert gc.collect() >= 0 and gc.get_freeze_count() == frozen  # later passes leave the frozen ones alone
