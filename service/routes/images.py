"""`POST /v1/images/generations`: OpenAI's Images API over our generate path, so an OpenAI SDK works by
changing `base_url`.

It answers once the job finished (bounded by `FAE_MAX_WAIT_S`: a job still running then is canceled and the
answer is a 504, since OpenAI's API has no job to poll). Errors on this route use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, converted from the problem JSON every other route answers;
a 422 becomes OpenAI's 400.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.contract import GenerateRequest, JobStatus
from core.jobstore.base import AdmissionOutcome
from service.admission import admit_generate, rate_headers
from service.deps import GenerateCaller, ServicesDep
from service.edges import GatewayRoute
from service.presenters import finished_within, job_problem, present_job
from service.schemas import OpenAIImage, OpenAIImageRequest, OpenAIImagesResponse
from service.validation import invalid, resolve_model

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_error(response: Response) -> Response:
    """A problem JSON response in OpenAI's error shape (a 422 becomes a 400, as OpenAI answers)."""
    try:
        problem = json.loads(bytes(response.body))
    except ValueError:
        return response
    status = 400 if response.status_code == 422 else response.status_code
    errors = problem.get("errors") or []
    param = ".".join(str(p) for p in errors[0]["loc"][1:]) if errors and errors[0].get("loc") else None
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    kind_urn = str(problem.get("type", ""))
    code = kind_urn.rpartition(":")[2] if kind_urn.startswith("urn:") else None  # the problem's slug
    body = {
        "error": {
            "message": problem.get("detail") or problem.get("title"),
            "type": kind,
            "param": param,
            "code": code,
        }
    }
    headers = {
        k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
    }
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIErrorRoute(GatewayRoute):
    """Runs the app's own exception handlers (problem JSON), then reshapes their answer for OpenAI clients."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                problem = _problem_handler(request, exc)
                if problem is None:
                    raise
                answer = problem(request, exc)
                return openai_error(await answer if inspect.isawaitable(answer) else answer)

        return route


def _problem_handler(request: Request, exc: Exception) -> Callable[..., Any] | None:
    handlers = request.app.exception_handlers
    return next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)


router = APIRouter(prefix="/v1/images", tags=["openai"], route_class=OpenAIErrorRoute)


def generate_request(body: OpenAIImageRequest, image_size: int | None) -> GenerateRequest:
    """Our request for an OpenAI one; `size` must be the model's (FAE models have one size each)."""
    if body.size not in (None, "auto") and (image_size is None or body.size != f"{image_size}x{image_size}"):
        offered = f"{image_size}x{image_size}" if image_size else "its native size"
        raise invalid(
            "size", f"{body.size!r} is not offered: this model generates {offered} (or send 'auto')"
        )
    metadata = {"openai_user": body.user} if body.user else {}
    try:
        return GenerateRequest(
            model=body.model,
            prompt=body.prompt,
            n=body.n,
            response_format=body.response_format,
            metadata=metadata,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "prompt"
        raise invalid(field, first["msg"]) from exc


@router.post(
    "/generations",
    response_model=OpenAIImagesResponse,
    response_model_exclude_none=True,
    summary="Create images (OpenAI Images API; answers when the images are ready)",
    responses={
        400: {"description": 'Invalid request: `{"error": {"message", "type", "param", "code"}}`.'},
        504: {"description": "Not finished within the gateway's maximum wait: the job was canceled."},
    },
)
async def create_image(
    body: OpenAIImageRequest,
    request: Request,
    response: Response,
    principal: GenerateCaller,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> OpenAIImagesResponse:
    model = resolve_model(services.models, body.model)
    ours = generate_request(body, model.image_size)
    admission = await admit_generate(services, principal.tenant, ours, idempotency_key)
    assert admission.job is not None  # a refusal raised
    response.headers.update(rate_headers(admission.budget))
    created = admission.outcome is AdmissionOutcome.created
    wait_s = services.settings.gateway.max_wait_s
    job = await finished_within(services, admission.job, wait_s, created, "images")
    if job.status is not JobStatus.succeeded:
        raise job_problem(job)
    shown = await run_in_threadpool(present_job, job, services, request)
    data = [OpenAIImage(url=o.url, b64_json=o.b64_json) for o in shown.outputs]
    return OpenAIImagesResponse(created=int(job.created_at.timestamp()), data=data)
