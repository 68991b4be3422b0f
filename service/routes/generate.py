"""`POST /v1/generate`: validate against the model, admit, enqueue, optionally wait (`Prefer: wait=N`)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from core.contract import GenerateRequest, Job, JobKind, JobStatus
from core.jobstore import body_hash
from core.jobstore.base import Admission, AdmissionOutcome
from service.admission import admit, build_job, new_job_id, rate_headers
from service.deps import GenerateCaller, Services, ServicesDep
from service.presenters import present_job, presenting_blocks
from service.problems import ProblemError
from service.validation import check_adapter, check_condition, check_webhook, resolve_model

router = APIRouter(prefix="/v1", tags=["generate"])

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+(?:\.\d+)?))?(?=$|[,;\s])", re.IGNORECASE)


def parse_prefer_wait(prefer: str | None, max_wait_s: float) -> float | None:
    """Seconds to hold the request for `Prefer: wait=N` (bare `wait`: the maximum), capped."""
    if not prefer:
        return None
    match = _PREFER_WAIT.search(prefer)
    if match is None:
        return None
    requested = float(match.group(1)) if match.group(1) is not None else max_wait_s
    return min(requested, max_wait_s)


def accepted_types(accept: str | None) -> list[tuple[str, float]]:
    """`Accept` as (media range, q) pairs, best first (ties keep the header's order), q=0 left out."""
    ranked: list[tuple[str, float]] = []
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media and q > 0:
            ranked.append((media.lower(), q))
    return sorted(ranked, key=lambda pair: -pair[1])  # stable: equal q keeps the order given


def wants_image(accept: str | None, content_type: str | None) -> bool:
    """The caller prefers the image itself (its exact type, or image/*) to any JSON answer."""
    for media, _ in accepted_types(accept):
        if media.endswith("json") or media == "*/*":
            return False
        if content_type and media in (content_type, "image/*"):
            return True
    return False


def validated_job(services: Services, tenant: str, body: GenerateRequest, payload: dict[str, object]) -> Job:
    """The job a valid body asks for (an adapter or a webhook address is looked up: runs in a thread)."""
    model = resolve_model(services.models, body.model)
    check_condition(body, model)
    check_adapter(services.store, tenant, body, model)
    webhook_url = check_webhook(body.webhook_url, services.settings.webhooks)
    payload["model"] = model.name
    return build_job(new_job_id(), JobKind.generate, tenant, model.name, payload, body.metadata, webhook_url)


async def admit_generate(
    services: Services, tenant: str, body: GenerateRequest, idempotency_key: str | None
) -> Admission:
    """Everything between a valid body and a published job. A retry with the same key and body gets its
    job back whatever the budget says, even if the body would no longer validate (its model or adapter was
    removed since): the body hash is taken before the model name is filled in."""
    limits = services.settings.limits
    payload = body.model_dump(mode="json")
    digest = body_hash(payload)
    try:
        if body.adapter is None and body.webhook_url is None:  # nothing to look up: no thread needed
            job = validated_job(services, tenant, body, payload)
        else:
            job = await run_in_threadpool(validated_job, services, tenant, body, payload)
    except ProblemError:
        if idempotency_key:  # a check only: it replays, or stores and counts nothing
            earlier = await services.store.admit(
                tenant, JobKind.generate, limits, None, idempotency_key, digest
            )
            if earlier.outcome is AdmissionOutcome.replayed:
                return earlier
        raise
    return await admit(services.store, services.queue, limits, job, idempotency_key, digest)


@router.post(
    "/generate",
    response_model=Job,
    status_code=202,
    summary="Generate images",
    responses={
        200: {"description": "Finished within `Prefer: wait=N`: the finished job.", "model": Job},
        202: {"description": "Accepted: poll the job at `Location` (or wait for its webhook)."},
        303: {
            "description": "Finished (within `Prefer: wait=N`, or an idempotent replay of a finished job) and "
            "`Accept` prefers the output's image type (e.g. `image/png`) to JSON: `Location` is the first "
            "image (`curl -L` saves it in one command); `Content-Location` is the job."
        },
        422: {"description": "Invalid input (problem+json)."},
        429: {"description": "Rate, in-flight or queue limit (problem+json, Retry-After)."},
    },
)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    principal: GenerateCaller,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Job:
    admission = await admit_generate(services, principal.tenant, body, idempotency_key)
    assert admission.job is not None  # a refusal raised
    job, created = admission.job, admission.outcome is AdmissionOutcome.created
    response.headers.update(rate_headers(admission.budget))
    wait_s = parse_prefer_wait(prefer, services.settings.gateway.max_wait_s)
    if wait_s is not None and not job.status.terminal:
        job = await services.store.wait_terminal(job.id, wait_s) or job
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    response.status_code = 200 if job.status.terminal else 202
    presented = (
        await run_in_threadpool(present_job, job, services, request)
        if presenting_blocks(job)
        else present_job(job, services, request)
    )
    response.headers["Vary"] = "Accept"
    succeeded = presented.status is JobStatus.succeeded and bool(presented.outputs)
    if succeeded and wants_image(accept, presented.outputs[0].content_type):
        # See Other: the image itself. Unfinished or failed jobs answer as above (JSON or problem JSON).
        response.status_code = 303
        response.headers["Content-Location"] = response.headers["Location"]
        response.headers["Location"] = presented.outputs[0].url
    return presented
