"""What several routers share: a job as callers see it, ownership checks, cancellation."""

from __future__ import annotations

from urllib.parse import urljoin

from fastapi import Request

from core import metrics
from core.contract import Job, JobKind, JobStatus
from core.jobqueue import JobQueue
from core.jobstore import JobStore
from core.settings import Settings
from core.storage import Storage, presign_outputs
from service.problems import not_found


def present_job(job: Job, store: JobStore, storage: Storage, settings: Settings, request: Request) -> Job:
    """Outputs as presigned URLs (absolute), and the queue position of a queued job."""
    job = presign_outputs(job, storage, settings.storage.presign_expiry_s)
    if job.outputs and any(o.url and o.url.startswith("/") for o in job.outputs):
        base = str(request.base_url)
        job = job.model_copy(
            update={
                "outputs": [
                    o.model_copy(update={"url": urljoin(base, o.url)})
                    if o.url and o.url.startswith("/")
                    else o
                    for o in job.outputs
                ]
            }
        )
    if job.status is JobStatus.queued:
        job = job.model_copy(update={"queue_position": store.queue_position(job.id)})
    return job


def owned_job(store: JobStore, tenant: str, job_id: str, kind: JobKind | None = None) -> Job:
    """The caller's job, or 404 (also for another tenant's job: its existence is not disclosed)."""
    job = store.get_for_tenant(tenant, job_id)
    if job is None or (kind is not None and job.kind is not kind):
        raise not_found(kind.value if kind is not None else "job", job_id)
    return job


def cancel_job(store: JobStore, queue: JobQueue, job: Job) -> Job:
    """Queued: canceled now (and its webhook scheduled). Running: flagged for the worker. Terminal: as is."""
    result = store.request_cancel(job.id)
    if not job.status.terminal and result.status is JobStatus.canceled:
        metrics.JOBS_TOTAL.labels(kind=result.kind.value, status=JobStatus.canceled.value).inc()
        queue.notify_terminal(result)
    return result
