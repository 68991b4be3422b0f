"""Jobs of either kind: read, list, cancel, and follow as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from core.contract import Job, JobKind, JobStatus
from core.jobstore import JobStore
from service.deps import Caller, ServicesDep
from service.edges import GatewayRoute
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

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=GatewayRoute)

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


def event_id(job: Job) -> str:
    """An event's id names the job's state: `{attempts}.{status}.{step}`. A client that reconnects with
    `Last-Event-ID` gets only what changed since (no status event it already has)."""
    return f"{job.attempts}.{job.status.value}.{job.progress.step}"


def _seen(last_event_id: str | None) -> tuple[str | None, int | None]:
    """(`{attempts}.{status}`, step) of the last event a client saw; nothing for an id we did not send."""
    state, _, step = (last_event_id or "").rpartition(".")
    return (state, int(step)) if state and step.isdigit() else (None, None)


def progress_data(job: Job, queue_position: int | None) -> dict[str, object]:
    data: dict[str, object] = {
        "step": job.progress.step,
        "total": job.progress.total,
        "eta_s": job.progress.eta_s,
    }
    if job.progress.loss is not None:  # fine-tunes
        data["loss"] = job.progress.loss
    if queue_position is not None:  # a queued job moving up
        data["queue_position"] = queue_position
    return data


async def job_events(
    store: JobStore,
    job_id: str,
    render: Callable[[Job], Job],
    max_s: float,
    last_event_id: str | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """A `status` event (the whole job) when the status changes, small `progress` events (step, total, eta;
    a queued job's new queue position) in between; ends after a terminal status, when the job disappears, or
    after `max_s` (clients reconnect with `Last-Event-ID` and resume)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    seen_state, seen_step = _seen(last_event_id)
    seen_position: int | None = None
    async with store.subscribe(job_id) as events:
        while True:
            job = await run_in_threadpool(store.get, job_id)
            if job is None:
                yield ServerSentEvent(event="error", data={"detail": "the job no longer exists"})
                return
            state = f"{job.attempts}.{job.status.value}"
            queued = job.status is JobStatus.queued
            position = await run_in_threadpool(store.queue_position, job_id) if queued else None
            if state != seen_state:
                shown = await run_in_threadpool(render, job.model_copy(update={"queue_position": position}))
                yield ServerSentEvent(event="status", id=event_id(job), raw_data=shown.model_dump_json())
            elif job.progress.step != seen_step or position != seen_position:
                yield ServerSentEvent(event="progress", id=event_id(job), data=progress_data(job, position))
            seen_state, seen_step, seen_position = state, job.progress.step, position
            remaining = deadline - loop.time()
            if job.status.terminal or remaining <= 0:
                return
            if not await events.wait(min(_REREAD_S, remaining)):
                yield ServerSentEvent(comment="keep-alive")


def followed_job(
    job_id: JobId,
    principal: Caller,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Job:
    """The job to follow, checked before the stream starts (so a wrong id is a 404, not an empty stream).
    A finished job whose final event the client already has answers 204: the one answer that stops a
    browser's EventSource from reconnecting forever."""
    job = scoped_job(services.store, principal, job_id)
    if job.status.terminal and _seen(last_event_id)[0] == f"{job.attempts}.{job.status.value}":
        raise HTTPException(status_code=204)
    return job


@router.get(
    "/{job_id}/events",
    summary="Server-sent events of the job's status and progress until it ends (resumable: Last-Event-ID)",
    response_class=EventSourceResponse,
    responses={204: {"description": "The job has finished and `Last-Event-ID` names its final event."}},
)
async def events(
    job: Annotated[Job, Depends(followed_job)],
    services: ServicesDep,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
) -> AsyncIterable[ServerSentEvent]:
    def render(current: Job) -> Job:
        return present_job(current, services, request)

    max_s = services.settings.gateway.events_max_s
    async for event in job_events(services.store, job.id, render, max_s, last_event_id):
        yield event
