"""Long-lived processes take what they built at start-up out of the garbage collector's full passes.

CPython's oldest-generation collection walks every object it tracks. A gateway process (FastAPI, pydantic,
Celery's client) holds about 100,000 of them, and one such pass stops the process for about 50 ms, which made
most of the gateway's p99 under load (benchmarks/RESULTS.md, issue 13). A worker holds more. What start-up
built lives as long as the process, so `gc.freeze()` moves it to a permanent generation the collector skips;
what requests allocate later is collected as before. Cyclic garbage made before the freeze is collected
first: once frozen it never would be. A later call (embedded mode: once its model has loaded, while the gateway
froze at its own start) unfreezes first, so what died in between, such as a loader's temporaries, is collected
before the new freeze.
"""

from __future__ import annotations

import gc
import logging

from core import metrics

logger = logging.getLogger(__name__)


def freeze_startup_objects(stage: str) -> int:
    """Collect, then freeze every object alive now; returns how many are frozen. Call it when a process has
    finished starting (`stage` names when, for the log); calling it again collects and freezes everything anew."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    metrics.GC_FROZEN_OBJECTS.set(frozen)
    logger.info("start-up objects frozen", extra={"stage": stage, "frozen_objects": frozen})
    return frozen
