"""Where jobs, their states, leases, limits and adapters live: Redis in production, memory when embedded."""

from __future__ import annotations

from core.jobstore.base import (
    AdapterRegistry,
    IdempotencyConflict,
    InflightLimitExceeded,
    InvalidTransition,
    JobEventBus,
    JobEvents,
    JobNotFound,
    JobRecords,
    JobStore,
    JobStoreError,
    LeaseBook,
    WatermarkIndex,
    WebhookSecretBook,
    body_hash,
)
from core.jobstore.memory_store import MemoryJobStore
from core.jobstore.redis_store import RedisJobStore
from core.settings import Settings

__all__ = [
    "AdapterRegistry",
    "IdempotencyConflict",
    "InflightLimitExceeded",
    "InvalidTransition",
    "JobEventBus",
    "JobEvents",
    "JobNotFound",
    "JobRecords",
    "JobStore",
    "JobStoreError",
    "LeaseBook",
    "MemoryJobStore",
    "RedisJobStore",
    "WatermarkIndex",
    "WebhookSecretBook",
    "body_hash",
    "make_job_store",
]


def make_job_store(settings: Settings) -> JobStore:
    """The production store (Redis); embedded mode builds a ``MemoryJobStore`` in its composition root."""
    return RedisJobStore(settings.redis, settings.limits)
