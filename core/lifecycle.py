"""Policies on a job's end that the gateway and the workers share, so each has exactly one owner.

``record_terminal`` is the only place that counts a job reaching a terminal state (whoever made it so: the
worker that ran it, the reaper, a cancel of a queued job, a failed enqueue). ``dead_letter`` is the one
dead-letter policy: the reason the caller sees, the store's dead-letter list, the counters and the log line.
"""

from __future__ import annotations

import logging

from core import metrics
from core.contract import Job, JobStatus
from core.jobstore import JobStore

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
