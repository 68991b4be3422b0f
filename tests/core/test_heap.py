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
    assert frozen > 0 and f"fae_gc_frozen_objects {float(frozen)}" in metrics.render_latest()[0].decode()

    def permanent(obj: object) -> bool:  # alive and tracked, yet in none of the collector's three generations
        return gc.is_tracked(obj) and not any(o is obj for g in range(3) for o in gc.get_objects(g))

    assert permanent(kept)
    gc.collect()
    assert permanent(kept)  # later passes leave the frozen ones where they are
    assert not permanent(Node())  # what is made later is collected as before


def test_a_second_freeze_collects_what_died_since_the_first(unfrozen: None) -> None:
    """Embedded mode freezes at the gateway's start, while its model loads, and again once it has loaded:
    the loader's cyclic temporaries, frozen the first time, are collected by the second call."""
    temporary = Node()
    temporary.peer = Node()
    temporary.peer.peer = temporary
    gone = weakref.ref(temporary)
    freeze_startup_objects("first")
    del temporary  # dead now, but frozen: no collection would free it
    assert gc.collect() >= 0 and gone() is not None
    freeze_startup_objects("second")
    assert gone() is None
