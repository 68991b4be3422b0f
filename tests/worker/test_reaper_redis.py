"""The reaper on the real Redis job store: its lock, and `run_reaper` sending the task again through Celery."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from core.contract import Job, JobStatus
from core.jobstore import JobStore, RedisJobStore
from core.settings import Settings
from worker.leases import reap_once, reaper_lock
from worker.main import check_queues, run_reaper

pytestmark = pytest.mark.services

CELERY_DB = 12  # this module's Redis database (Celery's queue keys are not namespaced)


@pytest.fixture
def settings(redis_server: Any) -> Settings:
    url = redis_server.url(CELERY_DB)
    redis.Redis.from_url(url).flushdb()
    namespace = f"reap-{uuid.uuid4().hex[:8]}"
    return Settings().override(
        redis_url=url, redis_namespace=namespace, lease_s=0.2, heartbeat_s=0.05, max_deliveries=3
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[RedisJobStore]:
    store = RedisJobStore(settings.redis, settings.limits)
    try:
        yield store
    finally:
        store.flush_namespace()
        store.close()


def abandoned_running_job(store: JobStore, job: Job, settings: Settings) -> Job:
    """A job whose worker took it and died: running, with a lease nobody renews."""
    assert store.acquire_lease(job.id, "dead-worker", settings.worker.lease_s)
    store.transition(job.id, JobStatus.running, attempts=store.record_delivery(job.id))
    time.sleep(settings.worker.lease_s + 0.1)
    return job


def test_run_reaper_once_requeues_and_sends_the_task_again(
    settings: Settings, store: RedisJobStore, generate_job: Callable[..., Job], submit: Callable[..., Job]
) -> None:
    job = abandoned_running_job(store, submit(store, generate_job()), settings)
    assert run_reaper(settings, once=True) == 0
    assert store.get(job.id).status is JobStatus.queued
    messages = redis.Redis.from_url(settings.redis.url).lrange("generate", 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert message["headers"]["task"] == "fae.generate" and args == [job.id]


def test_only_one_reaper_acts_at_a_time(
    settings: Settings, store: RedisJobStore, generate_job: Callable[..., Job], submit: Callable[..., Job]
) -> None:
    job = abandoned_running_job(store, submit(store, generate_job()), settings)
    requeued: list[Job] = []
    holder = reaper_lock(settings)
    assert holder.acquire()
    try:
        report = reap_once(store, settings.worker, requeued.append, lock=reaper_lock(settings))
        assert report.skipped and requeued == [] and store.get(job.id).status is JobStatus.running
    finally:
        holder.release()
    report = reap_once(store, settings.worker, requeued.append, lock=reaper_lock(settings))
    assert not report.skipped and [j.id for j in requeued] == [job.id]


def test_worker_queue_names_are_checked() -> None:
    assert check_queues(["generate", " webhooks "]) == ["generate", "webhooks"]
    with pytest.raises(ValueError, match="unknown or missing queues"):
        check_queues(["generate", "gpu"])
    with pytest.raises(ValueError, match="unknown or missing queues"):
        check_queues([])
