"""`start_deadline_s` (issue 15, item 7): a job no worker started in time is canceled when a worker picks it up,
with reason `start_deadline_exceeded`, and never runs; a job in time, or one that already started once, runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from core.contract import Job, JobStatus
from core.jobstore import JobStore, MemoryJobStore
from core.jobstore.base import utcnow
from core.settings import Settings
from core.storage import LocalStorage
from worker.jobs import execute_job
from worker.jobs.common import JobContext, make_worker_id, start_deadline_passed


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().override(data_dir=tmp_path, lease_s=5, heartbeat_s=0.2)


def deliver(job: Job, store: JobStore, engine, settings: Settings, finished: list[Job]) -> Job | None:
    storage = LocalStorage(Path(settings.process.data_dir) / "files")
    return execute_job(
        job.id, JobContext(store, storage, engine, settings, make_worker_id(), finished.append)
    )


def test_a_job_past_its_start_deadline_is_canceled_not_run(
    engine, settings: Settings, generate_job: Callable[..., Job], submit
) -> None:
    store = MemoryJobStore(settings.limits)
    late = generate_job(model="tiny", start_deadline_s=1)
    late = submit(store, late.model_copy(update={"created_at": utcnow() - timedelta(seconds=5)}))
    finished: list[Job] = []
    final = deliver(late, store, engine, settings, finished)
    assert final is not None and final.status is JobStatus.canceled
    assert final.error.reason == "start_deadline_exceeded" and "start_deadline_s (1 s)" in final.error.message
    assert final.attempts == 0 and final.outputs == [] and final.started_at is None  # never ran
    assert store.queue_position(late.id) is None and finished == [final]  # left the queue; webhook sent


def test_jobs_in_time_or_already_started_run(
    engine, settings: Settings, generate_job: Callable[..., Job], submit
) -> None:
    store = MemoryJobStore(settings.limits)
    in_time = submit(store, generate_job(model="tiny", start_deadline_s=60))
    assert deliver(in_time, store, engine, settings, []).status is JobStatus.succeeded
    restarted = generate_job(model="tiny", start_deadline_s=1)
    restarted = restarted.model_copy(update={"created_at": utcnow() - timedelta(seconds=5), "attempts": 1})
    assert not start_deadline_passed(restarted)  # its worker died: the deadline was about starting
    submit(store, restarted)
    assert deliver(restarted, store, engine, settings, []).status is JobStatus.succeeded
