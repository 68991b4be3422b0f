"""Retention: a job's images and a fine-tune's uploaded dataset are deleted once older than their tenant's
retention (`FAE_OUTPUT_RETENTION_DAYS`, `FAE_DATASET_RETENTION_DAYS`, per tenant `FAE_TENANT_RETENTION`).

Every worker (and `fae reaper`) runs a sweeper thread, apart from the reaper so that a long listing never delays
requeueing a dead worker's job; a claim in Redis that lasts one `retention_sweep_s` lets a single worker sweep per
interval. Only `tenants/<tenant>/jobs/`, `datasets/` and `finetunes/` (checkpoints) are ever swept, each with its
own tenant's retention, and never the data of a job that is still queued or running (a fine-tune waiting in the
queue keeps its dataset whatever its age); adapters live until their owner deletes them. On a large bucket an S3
lifecycle rule does the same work without listing (README, "Retention").
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

from core.jobstore import JobStore
from core.settings import StorageSettings
from core.storage import Storage

log = logging.getLogger(__name__)

# Which of a tenant's areas the sweep covers, and which of its two retention periods applies (a fine-tune's
# checkpoints normally go when it succeeds; one that failed for good leaves them to this).
_AREAS = {"jobs": 0, "datasets": 1, "finetunes": 1}


def expired_keys(
    storage: Storage, settings: StorageSettings, now: datetime, store: JobStore | None = None
) -> list[str]:
    """Keys of outputs and datasets older than their tenant's retention (0 days: kept forever); with `store`,
    keys of jobs that are not finished yet are left alone."""
    overrides = settings.tenant_retentions()  # parsed once per sweep, not once per key
    defaults = (settings.output_retention_days, settings.dataset_retention_days)
    candidates: dict[str, list[str]] = {}  # job id -> its expired keys
    for key, modified in storage.list_modified("tenants/"):
        parts = key.split("/")  # tenants/<tenant>/<area>/<job id>/...
        if len(parts) < 5 or parts[2] not in _AREAS:
            continue
        days = overrides.get(parts[1], defaults)[_AREAS[parts[2]]]
        if days and now - modified > timedelta(days=days):
            candidates.setdefault(parts[3], []).append(key)
    expired = []
    for job_id, keys in candidates.items():
        job = store.get(job_id) if store is not None else None
        if job is not None and not job.status.terminal:
            continue
        expired += keys
    return sorted(expired)


class SweepClaim(Protocol):
    """Who sweeps this interval: `acquire()` is true for one caller per interval (a Redis key with that TTL)."""

    def acquire(self) -> bool: ...

    def close(self) -> None: ...


class RetentionSweeper:
    """Sweeps every `retention_sweep_s` on its own thread, when this worker wins the interval's claim."""

    def __init__(
        self, storage: Storage, settings: StorageSettings, store: JobStore, claim: SweepClaim
    ) -> None:
        self.storage, self.settings, self.store, self._claim = storage, settings, store, claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run_forever, name="fae-retention", daemon=True)

    def sweep(self) -> int:
        """One sweep if this worker wins the interval's claim; how many objects it deleted."""
        if not self._claim.acquire():
            return 0
        deleted = self.storage.delete_keys(
            expired_keys(self.storage, self.settings, datetime.now(UTC), self.store)
        )
        if deleted:
            log.info("retention sweep deleted %d objects", deleted, extra={"deleted": deleted})
        return deleted

    def start(self) -> RetentionSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._claim.close()

    def run_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again next interval")
            if self._stop.wait(self.settings.retention_sweep_s):
                return
