"""Admitting a job: one atomic, constant-cost step in the job store, then the Celery publish.

The store decides in one round trip (`JobStore.admit`): an idempotent retry gets its job back (never
limited); otherwise the tenant's rate, its in-flight count and the queue depth are checked in that order,
and only an admitted job spends rate budget. Every refusal is a 429 with Retry-After; every answer carries
the IETF `RateLimit` / `RateLimit-Policy` headers. An admitted job is stored and queued before it is
published, and a job that cannot be published is marked failed, never dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool

from core import metrics
from core.contract import DEFAULT_STRENGTH, GenerateRequest, Job, JobError, JobKind, JobStatus
from core.jobqueue import JobQueue
from core.jobstore import InvalidTransition, JobRecords, JobStore, body_hash
from core.jobstore.base import RATE_PERIOD_S, Admission, AdmissionOutcome, RateBudget, utcnow
from core.lifecycle import record_terminal
from core.logs import job_id_var, request_id_var, traceparent_var
from core.settings import LimitsSettings
from service.deps import Services
from service.input_images import checked_image, read_reference, store_inputs
from service.problems import ProblemError, too_many_requests
from service.validation import (
    check_adapter,
    check_condition,
    check_few_step,
    check_watermark,
    check_webhook,
    resolve_model,
)

logger = logging.getLogger(__name__)

# How long to suggest waiting when the queue is full (jobs drain at worker speed; a guess is fine).
QUEUE_FULL_RETRY_S = 10.0
# How long to suggest waiting when the tenant has too many unfinished jobs.
INFLIGHT_RETRY_S = 5.0
# The one rate policy's name in the `RateLimit` headers.
RATE_POLICY = "per-minute"


def new_job_id() -> str:
    return uuid.uuid4().hex


def rate_headers(budget: RateBudget) -> dict[str, str]:
    """IETF `RateLimit-Policy` (quota per window) and `RateLimit` (remaining, seconds until all is back)."""
    return {
        "RateLimit-Policy": f'"{RATE_POLICY}";q={budget.limit};w={int(RATE_PERIOD_S)}',
        "RateLimit": f'"{RATE_POLICY}";r={budget.remaining};t={math.ceil(budget.reset_s)}',
    }


def _refusal(admission: Admission, kind: JobKind, limits: LimitsSettings) -> ProblemError:
    outcome = admission.outcome
    if outcome is AdmissionOutcome.rate_limited:
        detail = f"more than {limits.rate_limit_per_minute} requests a minute for this tenant; slow down"
        problem = too_many_requests(detail, admission.retry_after_s or 1.0)
    elif outcome is AdmissionOutcome.inflight_limited:
        detail = f"this tenant already has {limits.max_inflight_per_tenant} unfinished jobs; retry when some finish"
        problem = too_many_requests(detail, INFLIGHT_RETRY_S, slug="inflight-limit")
    else:
        detail = f"the {kind.value} queue is full ({admission.queue_depth} jobs waiting); retry later"
        problem = too_many_requests(detail, QUEUE_FULL_RETRY_S, slug="queue-full")
    problem.headers = {**(problem.headers or {}), **rate_headers(admission.budget)}
    return problem


def _observe(admission: Admission, kind: JobKind) -> None:
    if admission.queue_depth is not None:
        metrics.QUEUE_DEPTH.labels(queue=kind.value).set(admission.queue_depth)


async def check_admission(
    store: JobStore,
    limits: LimitsSettings,
    tenant: str,
    kind: JobKind,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> Admission:
    """Refuse early (before a long upload is stored) what `admit` would refuse now; counts and stores nothing.
    With an idempotency key, the earlier job sent with that key and body is the answer (outcome `replayed`,
    whatever the budget says); the same key with another body raises IdempotencyConflict."""
    admission = await store.admit(tenant, kind, limits, None, idempotency_key, body_hash)
    _observe(admission, kind)
    if admission.outcome not in (AdmissionOutcome.admissible, AdmissionOutcome.replayed):
        raise _refusal(admission, kind, limits)
    return admission


async def admit(
    store: JobStore,
    queue: JobQueue,
    limits: LimitsSettings,
    job: Job,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> Admission:
    """Store, index and queue `job` atomically (or replay the key's earlier job), then publish it.

    The admission's `job` is the created or replayed job with its queue position; a refusal raises a 429
    problem and a reused key with another body raises IdempotencyConflict."""
    admission = await store.admit(job.tenant, job.kind, limits, job, idempotency_key, body_hash)
    _observe(admission, job.kind)
    if admission.job is not None:  # on the event loop: the request's access line names the job
        job_id_var.set(admission.job.id)
    if admission.outcome is AdmissionOutcome.created:
        try:
            await queue.enqueue_async(job)
        except Exception as exc:
            raise await run_in_threadpool(publish_failed, store, job) from exc
    elif admission.outcome is not AdmissionOutcome.replayed:
        raise _refusal(admission, job.kind, limits)
    return admission


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
        request_id=request_id_var.get(),  # the creating request's, carried into the worker's logs
        traceparent=traceparent_var.get(),
    )


def enqueue(jobs: JobRecords, queue: JobQueue, job: Job) -> None:
    """Queue a job stored outside admission (an operator's replay), then publish it."""
    jobs.mark_enqueued(job)
    publish(jobs, queue, job)


def publish(jobs: JobRecords, queue: JobQueue, job: Job) -> None:
    """Hand a stored, queued job to the workers; if that fails the job is marked failed (a 503)."""
    try:
        queue.enqueue(job)
    except Exception as exc:
        raise publish_failed(jobs, job) from exc


def publish_failed(jobs: JobRecords, job: Job) -> ProblemError:
    """Called while handling a failed publish: marks the job failed (logged, recorded) and returns the 503."""
    logger.exception("enqueue failed", extra={"job_id": job.id, "tenant": job.tenant})
    error = JobError(reason="enqueue_failed", message="the job could not be queued; submit it again")
    with contextlib.suppress(InvalidTransition):
        jobs.transition(job.id, JobStatus.failed, error=error)
    record_terminal(job.model_copy(update={"status": JobStatus.failed, "error": error}))
    return ProblemError(
        503,
        "Service Unavailable",
        f"the queue is unreachable; job {job.id} was marked failed. Retry shortly",
        slug="queue-unavailable",
        headers={"Retry-After": "5"},
        job_id=job.id,
    )


# --- generate: the checks and admission both generate routes share ---------------------------------


def validated_job(services: Services, tenant: str, body: GenerateRequest, payload: dict[str, object]) -> Job:
    """The job a valid body asks for (an adapter or a webhook address is looked up: runs in a thread)."""
    model = resolve_model(services.models, body.model)
    check_condition(body, model)
    check_few_step(body, model)
    check_adapter(services.store, tenant, body, model)
    check_watermark(tenant, body, services.settings.provenance)
    webhook_url = check_webhook(body.webhook_url, services.settings.webhooks)
    fields = model.job_fields(body.model)
    payload["model"] = fields["model"]
    job = build_job(
        new_job_id(), JobKind.generate, tenant, fields["model"], payload, body.metadata, webhook_url
    )
    return job.model_copy(update=fields)


async def admit_generate(
    services: Services,
    tenant: str,
    body: GenerateRequest,
    idempotency_key: str | None,
    upload: bytes | None = None,
) -> Admission:
    """Everything between a valid body and a published job. A retry with the same key and body gets its
    job back whatever the budget says, even if the body would no longer validate (its model or adapter was
    removed since): the body hash is taken before the model name is filled in.

    An input image (`body.image`, or `upload`: a multipart file) is checked first and stored under the new
    job's prefix before the job is admitted; the job's request names the stored key instead."""
    limits = services.settings.limits
    payload = body.model_dump(mode="json")
    image: tuple[bytes, str] | None = None
    digest: str | None = None
    try:
        if upload is not None or body.image is not None:
            image = await run_in_threadpool(read_input_image, services, tenant, body, upload)
            payload["image"] = hashlib.sha256(image[0]).hexdigest()  # the digest: same image, same request
            payload["strength"] = DEFAULT_STRENGTH if body.strength is None else body.strength
        digest = body_hash(payload)
        if body.adapter is None and body.webhook_url is None and image is None:  # no look-up: no thread
            job = validated_job(services, tenant, body, payload)
        else:
            job = await run_in_threadpool(validated_job, services, tenant, body, payload)
        if image is not None:
            job = await run_in_threadpool(store_input_image, services, job, image)
    except ProblemError:
        if idempotency_key and digest is not None:  # a check only: it replays, or stores and counts nothing
            earlier = await services.store.admit(
                tenant, JobKind.generate, limits, None, idempotency_key, digest
            )
            if earlier.outcome is AdmissionOutcome.replayed:
                return earlier
        raise
    if image is None:
        return await admit(services.store, services.queue, limits, job, idempotency_key, digest)
    try:
        admission = await admit(services.store, services.queue, limits, job, idempotency_key, digest)
    except Exception:
        await run_in_threadpool(services.storage.delete_keys, [job.request["image"]])
        raise
    if admission.outcome is AdmissionOutcome.replayed:  # the earlier job has its own copy
        await run_in_threadpool(services.storage.delete_keys, [job.request["image"]])
    return admission


def read_input_image(
    services: Services, tenant: str, body: GenerateRequest, upload: bytes | None
) -> tuple[bytes, str]:
    """The request's input image, checked (service/input_images.py): its bytes and extension."""
    gateway = services.settings.gateway
    if upload is not None:  # a multipart file part (its `image` field holds a placeholder)
        data = upload
    else:
        assert body.image is not None
        data = read_reference(body.image, "image", tenant, services.storage, gateway)
    return data, checked_image(data, "image", gateway)


def store_input_image(services: Services, job: Job, image: tuple[bytes, str]) -> Job:
    """Store the input under the job's prefix; the job, its request naming the stored key."""
    (key,) = store_inputs(services.storage, job.tenant, job.id, [image])
    return job.model_copy(update={"request": {**job.request, "image": key}})
