"""Policies on a job's end that the gateway and the workers share, so each has exactly one owner.

``record_terminal`` is the only place that counts a job reaching a terminal state (whoever made it so: the
worker that ran it, the reaper, a cancel of a queued job, a failed enqueue). ``dead_letter`` is the one
dead-letter policy: the reason the caller sees, the store's dead-letter list, the counters and the log line.
``cancel_past_start_deadline`` is the one start-deadline policy (the worker that reaches such a job, and the
reaper's sweep of jobs no worker reached).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core import metrics
from core.contract import Job, JobError, JobStatus, start_deadline_at
from core.jobstore import InvalidTransition, JobStore

log = logging.getLogger(__name__)


def record_terminal(job: Job) -> None:
    """Count ``job``, which just became terminal: ``fae_jobs_total``, and for a failed job its reason."""
    kind = job.kind.value
    metrics.JOBS_TOTAL.labels(kind=kind, status=job.status.value).inc()
    if job.status is JobStatus.failed and job.error is not None:
        metrics.JOB_FAILURES.labels(kind=kind, reason=job.error.reason).inc()


def dead_letter(store: JobStore, job: Job, deliveries: int, max_deliveries: int) -> Job | None:
    """Park a job that was delivered ``deliveries`` times without finishing, failing it with reason
    ``dead_lettered``; the job as it is now (None if it expired meanwhile)."""
    reason = (
        f"the job was delivered {deliveries} times without finishing (limit {max_deliveries}); it was moved "
        "to the dead-letter list. Check the request, then replay it from the admin API"
    )
    store.dead_letter(job.id, reason)
    final = store.get(job.id)
    # Counted only when this call failed the job (a job that finished meanwhile was counted already).
    if (
        final is not None
        and final.error is not None
        and final.error.reason == "dead_lettered"
        and not job.status.terminal
    ):
        record_terminal(final)
    log.error("job dead-lettered", extra={"job_id": job.id, "tenant": job.tenant, "deliveries": deliveries})
    return final


def start_deadline_passed(job: Job, now: datetime | None = None) -> bool:
    """Whether a queued job that never started has waited past its `start_deadline_s`. A job requeued after
    its worker died had started: the deadline no longer applies."""
    if job.status is not JobStatus.queued or job.attempts:
        return False
    deadline_at = start_deadline_at(job)
    return deadline_at is not None and (now or datetime.now(UTC)) > deadline_at


def cancel_past_start_deadline(store: JobStore, job: Job) -> Job | None:
    """Cancel a job no worker started within its start deadline (it is never run); the canceled job, or None
    if it was not due or moved on meanwhile."""
    if not start_deadline_passed(job):
        return None
    deadline_s = job.request["start_deadline_s"]
    error = JobError(
        reason="start_deadline_exceeded",
        message=f"no worker started the job within its start_deadline_s ({deadline_s:g} s); it was not run",
    )
    try:
        final = store.transition(job.id, JobStatus.canceled, error=error)
    except InvalidTransition:
        return None
    record_terminal(final)
    log.info(
        "job canceled: start deadline exceeded", extra={"job_id": job.id, "start_deadline_s": deadline_s}
    )
    return final
