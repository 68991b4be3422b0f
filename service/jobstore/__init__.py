"""Where jobs, their states, leases, limits and adapters live: Redis in production, memory when embedded."""

from __future__ import annotations

from service.jobstore.base import (
    IdempotencyConflict,
    InflightLimitExceeded,
    InvalidTransition,
    JobEvents,
    JobNotFound,
    JobStore,
    JobStoreError,
    body_hash,
)
from service.jobstore.memory_store import MemoryJobStore
from service.jobstore.redis_store import RedisJobStore
from service.settings import Settings

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


def make_job_store(settings: Settings, embedded: bool) -> JobStore:
    if embedded:
        return MemoryJobStore(settings)
    return RedisJobStore(settings.redis_url, settings)
