"""`POST /v1/generate` as `multipart/form-data`: the input image as a file part named `image`, every other
request field as a form field (`metadata`, `guidance_intervals` and `webhook_events` as JSON text).

This route answers only multipart requests (`MultipartRoute`), and is included before the JSON route, which
answers everything else exactly as before; both share admission and the answer (`service.routes.generate`).
The OpenAPI document shows the one operation with both media types.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.routing import Match
from starlette.types import Scope

from core.contract import GenerateRequest, Job
from service.admission import admit_generate
from service.deps import GenerateCaller, ServicesDep
from service.edges import GatewayRoute
from service.input_images import read_part
from service.routes.generate import answer
from service.validation import invalid, parse_json

# Form fields that carry JSON rather than text.
JSON_FIELDS = ("metadata", "guidance_intervals", "webhook_events")
UPLOAD_PLACEHOLDER = "upload"  # the body's `image` while the file part travels beside it
_FORM_LIMITS = {"max_files": 1, "max_fields": 64, "max_part_size": 64 * 1024}


class MultipartRoute(GatewayRoute):
    """Matches multipart/form-data requests only, so the JSON route at the same path keeps the others."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.FULL:
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
            if not content_type.lower().startswith(b"multipart/form-data"):
                return Match.NONE, {}
        return match, child


router = APIRouter(prefix="/v1", tags=["generate"], route_class=MultipartRoute)


async def read_form(request: Request, limit: int) -> tuple[GenerateRequest, bytes]:
    """(body, image bytes) of a multipart generate request; form fields are text, so they are converted."""
    form = await request.form(**_FORM_LIMITS)
    try:
        raw: dict[str, Any] = {}
        image: bytes | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise invalid(name, "send the input image as a file part named 'image'")
                image = await read_part(value, "image", limit)
            elif name in JSON_FIELDS:
                raw[name] = parse_json(value, name)
            elif name == "image":
                raise invalid("image", "in a multipart request, send the image as a file part")
            else:
                raw[name] = value
        if image is None:
            raise invalid(
                "image", "a multipart generate request carries the input image as a file part 'image'"
            )
    finally:
        await form.close()
    raw["image"] = UPLOAD_PLACEHOLDER
    try:
        return GenerateRequest.model_validate(raw, strict=False), image
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


@router.post("/generate", response_model=Job, status_code=202, include_in_schema=False)
async def generate_with_upload(
    request: Request,
    response: Response,
    principal: GenerateCaller,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Job:
    body, image = await read_form(request, services.settings.gateway.max_dataset_file_bytes)
    admission = await admit_generate(services, principal.tenant, body, idempotency_key, upload=image)
    return await answer(admission, request, response, services, prefer, accept)
