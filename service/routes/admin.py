"""Operator endpoints (scope `admin`): the dead-letter list and its replay."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from core.contract import Job
from service.admission import build_job, enqueue, new_job_id
from service.deps import AdminCaller, ServicesDep
from service.edges import GatewayRoute
from service.presenters import present_job
from service.problems import not_found
from service.schemas import DeadLetterList, JobId

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=GatewayRoute)


@router.get("/dead-letters", response_model=DeadLetterList, summary="Jobs that kept killing their worker")
def list_dead_letters(principal: AdminCaller, services: ServicesDep) -> DeadLetterList:
    return DeadLetterList(data=services.store.list_dead_letters())


@router.post(
    "/dead-letters/{job_id}/replay",
    response_model=Job,
    status_code=202,
    summary="Run a dead-lettered job's request again, as a new job of the same tenant",
)
def replay_dead_letter(
    job_id: JobId,
    principal: AdminCaller,
    services: ServicesDep,
    request: Request,
    response: Response,
) -> Job:
    """Job states never go backwards, so the failed original stays failed; its request runs again under a
    new id (`metadata.replay_of` names the original) and the dead letter is removed."""
    store = services.store
    if not any(record.job_id == job_id for record in store.list_dead_letters()):
        raise not_found("dead letter", job_id)
    original = store.get(job_id)
    if original is None:
        store.remove_dead_letter(job_id)
        raise not_found("job", job_id)
    replay = build_job(
        new_job_id(),
        original.kind,
        original.tenant,
        original.model,
        original.request,
        {**original.metadata, "replay_of": original.id},
        original.webhook_url,
    )
    store.create(replay)
    enqueue(store, services.queue, replay)
    store.remove_dead_letter(job_id)
    response.headers["Location"] = f"/v1/jobs/{replay.id}"
    return present_job(store.get(replay.id) or replay, services, request)
