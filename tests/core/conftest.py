"""The job store under test: every store test runs against both backends (memory, and a real redis-server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from core.jobstore import JobStore, MemoryJobStore, RedisJobStore
from core.settings import Settings


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    settings = Settings().override(redis_namespace=f"test-{uuid.uuid4().hex[:12]}")
    if request.param == "memory":
        yield MemoryJobStore(settings.limits)
        return
    settings = settings.override(redis_url=request.getfixturevalue("redis_server").url())
    redis_store = RedisJobStore(settings.redis, settings.limits)
    try:
        yield redis_store
    finally:
        redis_store.flush_namespace()
        redis_store.close()
