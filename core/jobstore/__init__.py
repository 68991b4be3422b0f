"""Where jobs, their states, leases, limits and adapters live: Redis in production, memory when embedded."""

from __future__ import annotations

from core.jobstore.base import (
    IdempotencyConflict,
    InflightLimitExceeded,
    InvalidTransition,
    JobEvents,
    JobNotFound,
    JobStore,
    JobStoreError,
    body_hash,
)
from core.jobstore.memory_store import MemoryJobStore
from core.jobstore.redis_store import RedisJobStore
from core.settings import Settings

__all__ = [
    "IdempotencyConflict",
    "InflightLimitExceeded",
    "InvalidTransition",
    "JobEvents",
    "JobNotFound",
    "JobStore",
    "JobStoreError",
    "MemoryJobStore",
    "RedisJobStore",
    "body_hash",
    "make_job_store",
]


def make_job_store(settings: Settings) -> JobStore:
    """The production store (Redis); embedded mode builds a ``MemoryJobStore`` in its composition root."""
    return RedisJobStore(settings.redis.url, settings)
