"""`POST /v1/generate`: validate against the model, admit, enqueue, optionally wait (`Prefer: wait=N`)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from core.contract import GenerateRequest, Job, JobStatus
from core.jobstore.base import Admission, AdmissionOutcome
from service.admission import admit_generate, rate_headers
from service.deps import GenerateCaller, Services, ServicesDep
from service.edges import GatewayRoute, prefers_async
from service.presenters import present_job, presenting_blocks
from service.problems import ProblemError

router = APIRouter(prefix="/v1", tags=["generate"], route_class=GatewayRoute)
MULTIPART_SCHEMA = {
    "schema": {
        "type": "object",
        "required": ["image"],
        "description": "The input image as the file part `image`; every other field of the JSON body as a "
        "form field (`metadata`, `guidance_intervals`, `webhook_events` as JSON text).",
        "properties": {"image": {"type": "string", "format": "binary"}},
        "additionalProperties": True,
    }
}

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
    # Image-to-image may also arrive as multipart (service/routes/generate_upload.py answers that form).
    openapi_extra={"requestBody": {"content": {"multipart/form-data": MULTIPART_SCHEMA}}},
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
    limit = services.settings.gateway.max_body_bytes
    if (body.image is None or not body.image.startswith("data:")) and len(await request.body()) > limit:
        # The path's byte limit admits an input image as a data URI; other JSON bodies keep the usual one.
        raise ProblemError(413, None, f"the request body is larger than {limit} bytes", "body-too-large")
    admission = await admit_generate(services, principal.tenant, body, idempotency_key)
    return await answer(admission, request, response, services, prefer, accept)


async def answer(
    admission: Admission,
    request: Request,
    response: Response,
    services: Services,
    prefer: str | None,
    accept: str | None,
) -> Job:
    """The answer to an admitted generate request (JSON or multipart): 202, or 200/303 within `Prefer: wait`."""
    assert admission.job is not None  # a refusal raised
    job, created = admission.job, admission.outcome is AdmissionOutcome.created
    response.headers.update(rate_headers(admission.budget))
    # `Prefer: respond-async` wins over `wait`: 202 at once (RFC 7240).
    respond_async = prefers_async(prefer)
    wait_s = None if respond_async else parse_prefer_wait(prefer, services.settings.gateway.max_wait_s)
    if respond_async:
        response.headers["Preference-Applied"] = "respond-async"
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
    first_url = presented.outputs[0].url if presented.outputs else None  # none with b64_json
    succeeded = presented.status is JobStatus.succeeded and bool(first_url)
    if succeeded and wants_image(accept, presented.outputs[0].content_type):
        # See Other: the image itself. Unfinished or failed jobs answer as above (JSON or problem JSON).
        response.status_code = 303
        response.headers["Content-Location"] = response.headers["Location"]
        response.headers["Location"] = presented.outputs[0].url
    return presented
