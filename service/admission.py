"""Admitting a job: request rate, idempotency, per-tenant in-flight limit, global queue depth, then enqueue.

Every refusal is a 429 with Retry-After (or the idempotent replay of an earlier job); an accepted job is
stored before it is enqueued, and a job that cannot be enqueued is marked failed, never dropped.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from core import metrics
from core.contract import Job, JobError, JobKind, JobStatus
from core.jobqueue import JobQueue
from core.jobstore import InflightLimitExceeded, InvalidTransition, JobRecords, RateLimiter
from core.jobstore.base import utcnow
from core.lifecycle import record_terminal
from core.settings import LimitsSettings
from service.problems import ProblemError, too_many_requests

logger = logging.getLogger(__name__)

# How long to suggest waiting when the queue is full (jobs drain at worker speed; a guess is fine).
QUEUE_FULL_RETRY_S = 10.0


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_rate(rates: RateLimiter, limits: LimitsSettings, tenant: str) -> None:
    retry_after = rates.check_rate(tenant, limits.rate_limit_per_minute)
    if retry_after is not None:
        detail = f"more than {limits.rate_limit_per_minute} requests a minute for this tenant; slow down"
        raise too_many_requests(detail, retry_after)


def check_capacity(jobs: JobRecords, limits: LimitsSettings, tenant: str, kind: JobKind) -> None:
    """The non-atomic pre-check (the in-flight limit is enforced atomically again at create)."""
    if jobs.inflight_count(tenant) >= limits.max_inflight_per_tenant:
        raise InflightLimitExceeded(tenant, limits.max_inflight_per_tenant)  # a 429 (see problems.py)
    depth = jobs.queue_depth(kind)
    metrics.QUEUE_DEPTH.labels(queue=kind.value).set(depth)
    if depth >= limits.max_queue_depth:
        detail = f"the {kind.value} queue is full ({depth} jobs waiting); retry later"
        raise too_many_requests(detail, QUEUE_FULL_RETRY_S, slug="queue-full")


def build_job(
    job_id: str,
    kind: JobKind,
    tenant: str,
    model: str | None,
    request: dict[str, Any],
    metadata: dict[str, Any],
    webhook_url: str | None,
) -> Job:
    return Job(
        id=job_id,
        kind=kind,
        status=JobStatus.queued,
        tenant=tenant,
        model=model,
        request=request,
        metadata=metadata,
        created_at=utcnow(),
        webhook_url=webhook_url,
    )


def create_and_enqueue(
    jobs: JobRecords,
    queue: JobQueue,
    limits: LimitsSettings,
    job: Job,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> tuple[Job, bool]:
    """Store the job (atomically within the in-flight limit), then enqueue it. (job, created)."""
    stored, created = jobs.create(
        job, idempotency_key, body_hash, max_inflight=limits.max_inflight_per_tenant
    )
    if created:
        enqueue(jobs, queue, stored)
    return stored, created


def enqueue(jobs: JobRecords, queue: JobQueue, job: Job) -> None:
    jobs.mark_enqueued(job)
    try:
        queue.enqueue(job)
    except Exception as exc:
        logger.exception("enqueue failed", extra={"job_id": job.id, "tenant": job.tenant})
        error = JobError(reason="enqueue_failed", message="the job could not be queued; submit it again")
        with contextlib.suppress(InvalidTransition):
            jobs.transition(job.id, JobStatus.failed, error=error)
        record_terminal(job.model_copy(update={"status": JobStatus.failed, "error": error}))
        raise ProblemError(
            503,
            "Service Unavailable",
            f"the queue is unreachable; job {job.id} was marked failed. Retry shortly",
            slug="queue-unavailable",
            headers={"Retry-After": "5"},
            job_id=job.id,
        ) from exc
