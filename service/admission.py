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
from core.jobstore import InflightLimitExceeded, InvalidTransition, JobStore
from core.jobstore.base import utcnow
from core.settings import Settings
from service.problems import ProblemError, too_many_requests

logger = logging.getLogger(__name__)

# How long to suggest waiting when the queue is full (jobs drain at worker speed; a guess is fine).
QUEUE_FULL_RETRY_S = 10.0


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_rate(store: JobStore, settings: Settings, tenant: str) -> None:
    retry_after = store.check_rate(tenant, settings.limits.rate_limit_per_minute)
    if retry_after is not None:
        detail = (
            f"more than {settings.limits.rate_limit_per_minute} requests a minute for this tenant; slow down"
        )
        raise too_many_requests(detail, retry_after)


def check_capacity(store: JobStore, settings: Settings, tenant: str, kind: JobKind) -> None:
    """The non-atomic pre-check (the in-flight limit is enforced atomically again at create)."""
    if store.inflight_count(tenant) >= settings.limits.max_inflight_per_tenant:
        raise InflightLimitExceeded(
            tenant, settings.limits.max_inflight_per_tenant
        )  # a 429 (see problems.py)
    depth = store.queue_depth(kind)
    metrics.QUEUE_DEPTH.labels(queue=kind.value).set(depth)
    if depth >= settings.limits.max_queue_depth:
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
    store: JobStore,
    queue: JobQueue,
    settings: Settings,
    job: Job,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    enforce_inflight: bool = True,
) -> tuple[Job, bool]:
    """Store the job (atomically within the in-flight limit), then enqueue it. (job, created)."""
    limit = settings.limits.max_inflight_per_tenant if enforce_inflight else None
    stored, created = store.create(job, idempotency_key, body_hash, max_inflight=limit)
    if created:
        enqueue(store, queue, stored)
    return stored, created


def enqueue(store: JobStore, queue: JobQueue, job: Job) -> None:
    store.mark_enqueued(job)
    try:
        queue.enqueue(job)
    except Exception as exc:
        logger.exception("enqueue failed", extra={"job_id": job.id, "tenant": job.tenant})
        error = JobError(reason="enqueue_failed", message="the job could not be queued; submit it again")
        with contextlib.suppress(InvalidTransition):
            store.transition(job.id, JobStatus.failed, error=error)
        metrics.JOB_FAILURES.labels(kind=job.kind.value, reason="enqueue_failed").inc()
        metrics.JOBS_TOTAL.labels(kind=job.kind.value, status="failed").inc()
        raise ProblemError(
            503,
            "Service Unavailable",
            f"the queue is unreachable; job {job.id} was marked failed. Retry shortly",
            slug="queue-unavailable",
            headers={"Retry-After": "5"},
            job_id=job.id,
        ) from exc
