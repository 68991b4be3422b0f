"""What several routers share: a job as callers see it, ownership checks, listing, cancellation.

Everything here calls the job store or storage, which block: call it from plain `def` handlers (FastAPI's
thread pool) or through `run_in_threadpool`.
"""

from __future__ import annotations

from urllib.parse import urljoin

from fastapi import Request

from core.contract import Job, JobKind, JobStatus
from core.jobstore import JobRecords
from core.lifecycle import record_terminal
from core.storage import presign_outputs
from service.deps import Services
from service.problems import not_found
from service.schemas import JobPage
from service.validation import invalid


def present_job(job: Job, services: Services, request: Request) -> Job:
    """Outputs as presigned URLs (absolute), and the queue position of a queued job."""
    job = presign_outputs(job, services.storage, services.settings.storage.presign_expiry_s)
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
        job = job.model_copy(update={"queue_position": services.store.queue_position(job.id)})
    return job


def owned_job(jobs: JobRecords, tenant: str, job_id: str, kind: JobKind | None = None) -> Job:
    """The caller's job, or 404 (also for another tenant's job: its existence is not disclosed)."""
    job = jobs.get_for_tenant(tenant, job_id)
    if job is None or (kind is not None and job.kind is not kind):
        raise not_found(kind.value if kind is not None else "job", job_id)
    return job


def job_page(
    services: Services, request: Request, tenant: str, kind: JobKind | None, limit: int, cursor: str | None
) -> JobPage:
    """One page of the tenant's jobs, newest first, as callers see them (422 for a cursor we never gave)."""
    try:
        jobs, next_cursor = services.store.list_for_tenant(tenant, kind, limit, cursor)
    except ValueError as exc:
        raise invalid("cursor", "not a cursor this API returned") from exc
    return JobPage(data=[present_job(job, services, request) for job in jobs], next_cursor=next_cursor)


def cancel_job(services: Services, job: Job) -> Job:
    """Queued: canceled now (and its webhook scheduled). Running: flagged for the worker. Terminal: as is."""
    result = services.store.request_cancel(job.id)
    if not job.status.terminal and result.status is JobStatus.canceled:
        record_terminal(result)
        services.queue.notify_terminal(result)
    return result
