"""Jobs of either kind: read, list, cancel, and follow as server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.contract import Job, JobKind, JobStatus
from core.jobstore import JobStore
from service.deps import Caller, ServicesDep
from service.presenters import (
    cancel_job,
    delete_job,
    job_page,
    listed_kind,
    present_job,
    presenting_blocks,
    scoped_job,
    visible_job,
)
from service.schemas import JobId, JobPage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# While nothing changes, an event stream still re-reads the job this often (queue positions move) and
# sends a comment line (keeps proxies from closing an idle stream).
_REREAD_S = 5.0


@router.get("", response_model=JobPage, summary="List the caller's jobs, newest first")
def list_jobs(
    principal: Caller,
    services: ServicesDep,
    request: Request,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> JobPage:
    return job_page(services, request, principal.tenant, listed_kind(principal, kind), limit, cursor)


@router.get("/{job_id}", response_model=Job, summary="A job: status, progress, outputs (presigned URLs)")
async def get_job(job_id: JobId, principal: Caller, services: ServicesDep, request: Request) -> Job:
    job = visible_job(await services.store.fetch(job_id), principal, job_id)  # one read, on the event loop
    if presenting_blocks(job):
        return await run_in_threadpool(present_job, job, services, request)
    return present_job(job, services, request)


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    summary="Cancel a job (queued: at once; running: at its next step)",
    responses={202: {"description": "Running: the worker stops at its next denoising step."}},
)
def cancel(
    job_id: JobId,
    principal: Caller,
    services: ServicesDep,
    request: Request,
    response: Response,
) -> Job:
    result = cancel_job(services, scoped_job(services.store, principal, job_id))
    response.status_code = 202 if result.status is JobStatus.running else 200
    return present_job(result, services, request)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job: its images, its uploaded dataset (fine-tunes) and its record",
    responses={409: {"description": "The job has not finished: cancel it first (problem+json)."}},
)
def delete(job_id: JobId, principal: Caller, services: ServicesDep) -> Response:
    delete_job(services, scoped_job(services.store, principal, job_id))
    return Response(status_code=204)


def _sse(event: str, data: str, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def job_events(
    store: JobStore, job_id: str, render: Callable[[Job], Job], max_s: float
) -> AsyncIterator[str]:
    """`status` events when the status changes, `progress` events in between; ends at a terminal state,
    when the job disappears, or after `max_s` (clients reconnect)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    last_status: JobStatus | None = None
    last_seen: str | None = None
    event_id = 0
    async with store.subscribe(job_id) as events:
        while True:
            job = await run_in_threadpool(store.get, job_id)
            if job is None:
                yield _sse("error", json.dumps({"detail": "the job no longer exists"}), event_id + 1)
                return
            shown = await run_in_threadpool(render, job)
            data = shown.model_dump_json()
            if data != last_seen:
                event_id += 1
                yield _sse("status" if job.status is not last_status else "progress", data, event_id)
                last_status, last_seen = job.status, data
            remaining = deadline - loop.time()
            if job.status.terminal or remaining <= 0:
                return
            if not await events.wait(min(_REREAD_S, remaining)):
                yield ": keep-alive\n\n"


@router.get(
    "/{job_id}/events",
    summary="Server-sent events of the job's status and progress until it ends",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def events(job_id: JobId, principal: Caller, services: ServicesDep, request: Request) -> StreamingResponse:
    scoped_job(services.store, principal, job_id)

    def render(job: Job) -> Job:
        return present_job(job, services, request)

    stream = job_events(services.store, job_id, render, services.settings.gateway.events_max_s)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
