"""The one owner of terminal-state counting and of the dead-letter policy."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from core.contract import Job, JobError, JobKind, JobStatus
from core.jobstore import MemoryJobStore
from core.jobstore.base import utcnow
from core.lifecycle import dead_letter, record_terminal
from core.settings import Settings


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queued_job(kind: JobKind = JobKind.finetune) -> Job:
    return Job(
        id=uuid.uuid4().hex,
        kind=kind,
        status=JobStatus.queued,
        tenant="acme",
        request={},
        created_at=utcnow(),
    )


def test_record_terminal_counts_the_status_and_a_failure_reason() -> None:
    total = ("fae_jobs_total", {"kind": "finetune", "status": "failed"})
    failures = ("fae_job_failures_total", {"kind": "finetune", "reason": "internal"})
    canceled = ("fae_jobs_total", {"kind": "finetune", "status": "canceled"})
    before = [sample(name, **labels) for name, labels in (total, failures, canceled)]
    error = JobError(reason="internal", message="boom")
    record_terminal(queued_job().model_copy(update={"status": JobStatus.failed, "error": error}))
    record_terminal(queued_job().model_copy(update={"status": JobStatus.canceled}))
    after = [sample(name, **labels) for name, labels in (total, failures, canceled)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_dead_letter_fails_parks_and_counts_the_job_once() -> None:
    store = MemoryJobStore(Settings().limits)
    job, _ = store.create(queued_job(JobKind.generate))
    labels = {"kind": "generate", "reason": "dead_lettered"}
    before = sample("fae_job_failures_total", **labels)
    final = dead_letter(store, job, deliveries=3, max_deliveries=2)
    assert final is not None and final.status is JobStatus.failed and final.error.reason == "dead_lettered"
    assert "delivered 3 times without finishing (limit 2)" in final.error.message
    assert [d.job_id for d in store.list_dead_letters()] == [job.id]
    dead_letter(store, final, deliveries=3, max_deliveries=2)  # already terminal: not counted again
    assert sample("fae_job_failures_total", **labels) - before == 1
