"""Retention: a job's images and a fine-tune's uploaded dataset are deleted once older than their tenant's
retention (`FAE_OUTPUT_RETENTION_DAYS`, `FAE_DATASET_RETENTION_DAYS`, per tenant `FAE_TENANT_RETENTION`).

Every reaper runs a sweep each `retention_sweep_s`; sweeps are idempotent, so several reapers sweeping at once
only repeat deletes. Only `tenants/<tenant>/jobs/`, `datasets/` and `finetunes/` (checkpoints) are ever swept, each with
its own tenant's retention; adapters live until their owner deletes them. On a large bucket an S3 lifecycle
rule does the same work without listing (README, "Retention").
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from core.settings import StorageSettings
from core.storage import Storage

log = logging.getLogger(__name__)

# Which of a tenant's areas the sweep covers, and which of its two retention periods applies (a fine-tune's
# checkpoints normally go when it succeeds; one that failed for good leaves them to this).
_AREAS = {"jobs": 0, "datasets": 1, "finetunes": 1}


def expired_keys(storage: Storage, settings: StorageSettings, now: datetime) -> list[str]:
    """Keys of outputs and datasets older than their tenant's retention (0 days: kept forever)."""
    expired = []
    for key, modified in storage.list_modified("tenants/"):
        parts = key.split("/")
        if len(parts) < 4 or parts[2] not in _AREAS:
            continue
        days = settings.retention_days(parts[1])[_AREAS[parts[2]]]
        if days and now - modified > timedelta(days=days):
            expired.append(key)
    return expired


class RetentionSweeper:
    """Sweeps at most every `retention_sweep_s`; the reaper calls `maybe_sweep` on each of its passes."""

    def __init__(self, storage: Storage, settings: StorageSettings) -> None:
        self.storage, self.settings = storage, settings
        self._next_at = 0.0

    def maybe_sweep(self) -> int:
        """How many objects this call deleted (0 when it was not yet time)."""
        if time.monotonic() < self._next_at:
            return 0
        self._next_at = time.monotonic() + self.settings.retention_sweep_s
        deleted = self.storage.delete_keys(expired_keys(self.storage, self.settings, datetime.now(UTC)))
        if deleted:
            log.info("retention sweep deleted %d objects", deleted, extra={"deleted": deleted})
        return deleted
