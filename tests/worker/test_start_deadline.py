"""`start_deadline_s` (issue 15, item 7): a job no worker started in time is canceled, with reason
`start_deadline_exceeded`, and never runs: by the reaper's sweep while it waits (a stalled queue), or by the worker
that picks it up first; a job in time, or one that already started once, runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from core.contract import Job, JobStatus
from core.jobstore import JobStore, MemoryJobStore
from core.jobstore.base import utcnow
from core.lifecycle import start_deadline_passed
from core.settings import Settings
from core.storage import LocalStorage
from worker.jobs import execute_job
from worker.jobs.common import JobContext, make_worker_id
from worker.leases import reap_once


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


def test_the_reaper_cancels_queued_jobs_past_their_start_deadline_without_a_worker(
    any_store: JobStore, settings: Settings, generate_job: Callable[..., Job], submit
) -> None:
    """No worker ever reaches these jobs (a stalled queue): the reaper's pass cancels the late one, sends its
    webhook, and leaves the one in time, the one that already started once and the one without a deadline."""
    store, past = any_store, utcnow() - timedelta(seconds=5)
    late = submit(store, generate_job(start_deadline_s=1).model_copy(update={"created_at": past}))
    in_time = submit(store, generate_job(start_deadline_s=600))
    plain = submit(store, generate_job())
    restarted = generate_job(start_deadline_s=1).model_copy(update={"created_at": past, "attempts": 1})
    restarted = submit(store, restarted)
    notified: list[Job] = []

    report = reap_once(store, settings.worker, requeue=lambda job: None, on_terminal=notified.append)

    assert report.past_start_deadline == [late.id] and [job.id for job in notified] == [late.id]
    canceled = store.get(late.id)
    assert canceled.status is JobStatus.canceled and canceled.error.reason == "start_deadline_exceeded"
    assert store.queue_position(late.id) is None  # off the queue index: positions move up
    for waiting in (in_time, plain, restarted):
        assert store.get(waiting.id).status is JobStatus.queued
    assert store.due_start_deadlines() == []  # each due job is looked at once
    assert reap_once(store, settings.worker, lambda job: None, notified.append).past_start_deadline == []


def test_a_webhook_event_that_cannot_be_scheduled_never_strands_the_job(
    engine, settings: Settings, generate_job: Callable[..., Job], submit
) -> None:
    """A broker blip while scheduling `job.started` used to escape after the job was marked running, leaving
    it `running` with its lease released, where no reaper looks. The job runs to the end instead."""
    store = MemoryJobStore(settings.limits)
    job = submit(
        store,
        generate_job(model="tiny", webhook_url="https://example.com/hook", webhook_events=["job.started"]),
    )

    def broker_down(job: Job, event: str) -> None:
        raise ConnectionError("broker unreachable")

    storage = LocalStorage(Path(settings.process.data_dir) / "files")
    context = JobContext(store, storage, engine, settings, make_worker_id(), None, on_event=broker_down)
    final = execute_job(job.id, context)
    assert final is not None and final.status is JobStatus.succeeded and final.outputs
