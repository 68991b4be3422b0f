"""What several routers share: a job as callers see it, ownership checks, listing, cancellation.

Everything here calls the job store or storage, which block: call it from plain `def` handlers (FastAPI's
thread pool) or through `run_in_threadpool`; the one `async` function, `finished_within`, does that itself.
"""

from __future__ import annotations

import base64
from urllib.parse import urljoin

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.contract import Job, JobKind, JobLinks, JobStatus, dataset_key, job_prefix
from core.jobstore import JobRecords
from core.lifecycle import record_terminal
from core.storage import Storage, presign_outputs
from service.auth import SCOPE_FOR_KIND, Principal
from service.deps import Services, missing_scope
from service.problems import ProblemError, not_found
from service.schemas import JobPage
from service.validation import invalid


def presenting_blocks(job: Job) -> bool:
    """Whether `present_job` may wait on storage (presigning) or the job store (an unknown queue position);
    when not, an async route calls it on the event loop instead of a thread."""
    return bool(job.outputs) or (job.status is JobStatus.queued and job.queue_position is None)


def present_job(job: Job, services: Services, request: Request, inline: bool = True) -> Job:
    """Outputs as presigned URLs (absolute) or, for `response_format: b64_json`, as base64 bytes (unless
    `inline` is off: listings carry URLs, so a page of 100 jobs never reads 800 images into memory), and the
    queue position of a queued job (looked up unless the job was read with it: `JobStore.fetch`, admission)."""
    if inline and job.outputs and job.request.get("response_format") == "b64_json":
        return with_links(inline_outputs(job, services.storage))
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
    if job.status is JobStatus.queued and job.queue_position is None:
        job = job.model_copy(update={"queue_position": services.store.queue_position(job.id)})
    return with_links(job)


def with_links(job: Job) -> Job:
    """The job with `links`: where to read, cancel and follow it, and its images (like fal's status, cancel and
    response URLs)."""
    base = f"/v1/jobs/{job.id}"
    links = JobLinks(
        self=base,
        cancel=f"{base}/cancel",
        events=f"{base}/events",
        outputs=[o.url for o in job.outputs if o.url],
    )
    return job.model_copy(update={"links": links})


def inline_outputs(job: Job, storage: Storage) -> Job:
    """The job with each output's image bytes in `b64_json` (and no URL), read from storage; an output that
    retention or a delete has removed shows neither."""
    outputs = []
    for output in job.outputs:
        try:
            encoded: str | None = base64.b64encode(storage.get_bytes(output.key)).decode()
        except FileNotFoundError:
            encoded = None
        outputs.append(output.model_copy(update={"b64_json": encoded, "url": None}))
    return job.model_copy(update={"outputs": outputs})


def owned_job(jobs: JobRecords, tenant: str, job_id: str, kind: JobKind | None = None) -> Job:
    """The caller's job, or 404 (also for another tenant's job: its existence is not disclosed)."""
    job = jobs.get_for_tenant(tenant, job_id)
    if job is None or (kind is not None and job.kind is not kind):
        raise not_found(kind.value if kind is not None else "job", job_id)
    return job


def scoped_job(jobs: JobRecords, principal: Principal, job_id: str) -> Job:
    """The caller's job on the routes shared by both kinds: 404 for another tenant's, 403 when the key lacks the
    scope of the job's kind (a generate-only key never reads a fine-tune, nor the reverse)."""
    return visible_job(jobs.get(job_id), principal, job_id)


def visible_job(job: Job | None, principal: Principal, job_id: str) -> Job:
    """`scoped_job`'s checks on a job already read (the GET route reads it with its queue position)."""
    if job is None or job.tenant != principal.tenant:
        raise not_found("job", job_id)
    if not principal.reads(job.kind):
        raise missing_scope(SCOPE_FOR_KIND[job.kind])
    return job


def listed_kind(principal: Principal, kind: JobKind | None) -> JobKind | None:
    """The kind a shared listing may show this key: the one asked for (if its scope is held), else the one kind
    the key holds, else both (None)."""
    if kind is not None:
        if not principal.reads(kind):
            raise missing_scope(SCOPE_FOR_KIND[kind])
        return kind
    # One scope held: its main kind (a generate-only key lists generate jobs; `?kind=embed` lists the rest).
    held = [k for k in (JobKind.generate, JobKind.finetune) if principal.reads(k)]
    if not held:
        raise missing_scope(JobKind.generate.value)
    return held[0] if len(held) == 1 else None


def job_page(
    services: Services, request: Request, tenant: str, kind: JobKind | None, limit: int, cursor: str | None
) -> JobPage:
    """One page of the tenant's jobs, newest first, as callers see them (422 for a cursor we never gave)."""
    try:
        jobs, next_cursor = services.store.list_for_tenant(tenant, kind, limit, cursor)
    except ValueError as exc:
        raise invalid("cursor", "not a cursor this API returned") from exc
    shown = [present_job(job, services, request, inline=False) for job in jobs]
    return JobPage(data=shown, next_cursor=next_cursor)


def delete_job(services: Services, job: Job) -> None:
    """A finished job's images, its uploaded dataset (fine-tunes) and then its record: storage first, so a
    storage outage (503) leaves the record to delete again. An adapter it trained stays (DELETE the adapter)."""
    if not job.status.terminal:
        detail = (
            f"job {job.id} is {job.status.value}; cancel it (POST /v1/jobs/{job.id}/cancel), then delete it"
        )
        raise ProblemError(409, "Conflict", detail, "job-not-finished")
    services.storage.delete_prefix(job_prefix(job.tenant, job.id))
    if job.kind is JobKind.finetune:
        services.storage.delete_prefix(dataset_key(job.tenant, job.id))
    services.store.delete_finished(job)


async def finished_within(services: Services, job: Job, wait_s: float, created: bool, what: str) -> Job:
    """`job` once it has ended, for routes that answer with its results (embeddings, OpenAI images): waited on
    for `wait_s`, then canceled if this request created it (a retry with its idempotency key waits on the job,
    never cancels it). A job still unfinished is a 504; one that ended meanwhile is returned."""
    done = await services.store.wait_terminal(job.id, wait_s) or job
    if not done.status.terminal and created:
        done = await run_in_threadpool(cancel_job, services, done)
    if not done.status.terminal:
        raise ProblemError(
            504, "Gateway Timeout", f"the {what} were not ready within {wait_s:g} s", "timeout"
        )
    return done


def job_problem(job: Job) -> ProblemError:
    """Why a finished job has no results, with the status a caller can act on."""
    reason = job.error.reason if job.error else job.status.value
    message = job.error.message if job.error else f"the job was {job.status.value}"
    if job.status is JobStatus.canceled:  # canceled by its own timeout (a replay of it), or by its owner
        return ProblemError(409, None, f"the job was canceled ({message}); send a new request", reason)
    if reason == "invalid_input":
        return ProblemError(400, None, message, reason)
    if reason == "storage_unavailable":
        return ProblemError(503, None, message, reason, headers={"Retry-After": "10"}, retry_after=10)
    return ProblemError(500, None, message, reason)


def cancel_job(services: Services, job: Job) -> Job:
    """Queued: canceled now (and its webhook scheduled). Running: flagged for the worker. Terminal: as is."""
    result = services.store.request_cancel(job.id)
    if not job.status.terminal and result.status is JobStatus.canceled:
        record_terminal(result)
        services.queue.notify_terminal(result)
    return result
