"""`POST /v1/embeddings`: vectors of images, answered synchronously.

The gateway has no torch: the images are checked and stored under a new `embed` job's prefix
(service/input_images.py), the job runs on a generate worker's engine (worker/jobs/embed.py), and this route
waits for it (at most FAE_MAX_WAIT_S, like `Prefer: wait`) and answers with the vectors the worker wrote. A job
not finished by then is canceled and the answer is 504.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.contract import MAX_EMBED_IMAGES, EmbeddingKind, EmbedRequest, JobKind, JobStatus, embeddings_key
from core.storage import Storage
from service.admission import admit, build_job, new_job_id
from service.deps import GenerateCaller, Services, ServicesDep
from service.edges import GatewayRoute
from service.input_images import checked_image, read_part, read_reference, store_inputs
from service.presenters import finished_within, job_problem
from service.problems import unsupported_media_type
from service.validation import invalid, parse_json_body, resolve_model

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=GatewayRoute)
_FORM_LIMITS = {"max_files": MAX_EMBED_IMAGES, "max_fields": 8, "max_part_size": 64 * 1024}


class Embedding(BaseModel):
    index: int
    embedding: list[float] | list[list[float]] = Field(
        description="`latent` and `encoder`: one vector; `latent_tokens`: one vector per latent grid cell."
    )


class EmbeddingList(BaseModel):
    object: str = "list"
    model: str = Field(description="The model (and version, if pinned) that computed them.")
    kind: EmbeddingKind
    dimensions: int = Field(description="Length of each vector.")
    data: list[Embedding]
    job_id: str


def _validated(raw: Any, strict: bool) -> EmbedRequest:
    if not isinstance(raw, dict):
        raise invalid("body", "the JSON body must be an object")
    try:
        return EmbedRequest.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def _read_request(request: Request, limit: int) -> tuple[EmbedRequest, list[bytes] | None]:
    """(request, uploaded images or None). JSON names the images; multipart carries them as `images` parts."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        return _validated(parse_json_body(await request.body()), strict=True), None
    if not content_type.startswith("multipart/form-data"):
        raise unsupported_media_type(
            request.headers.get("content-type"), "application/json, or multipart/form-data with image files"
        )
    form = await request.form(**_FORM_LIMITS)
    try:
        raw: dict[str, Any] = {}
        uploads: list[bytes] = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "images":
                    raise invalid(name, "send the images as file parts named 'images'")
                uploads.append(await read_part(value, "images", limit))
            else:
                raw[name] = value
    finally:
        await form.close()
    raw["images"] = ["upload"] * len(uploads)  # validated for their count; the parts are the images
    return _validated(raw, strict=False), uploads


def _prepare(
    services: Services, tenant: str, body: EmbedRequest, uploads: list[bytes] | None, job_id: str
) -> list[str]:
    """Every image read and checked first, then stored under the job's prefix; their keys."""
    gateway = services.settings.gateway
    images = []
    for index, value in enumerate(uploads if uploads is not None else body.images):
        field = f"images[{index}]"
        data = (
            value
            if isinstance(value, bytes)
            else read_reference(value, field, tenant, services.storage, gateway)
        )
        images.append((data, checked_image(data, field, gateway)))
    return store_inputs(services.storage, tenant, job_id, images)


def _vectors(storage: Storage, tenant: str, job_id: str) -> dict[str, Any]:
    return json.loads(storage.get_bytes(embeddings_key(tenant, job_id)))


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    summary="Embed images (FAE latents or frozen-encoder features)",
    responses={200: {"description": "The vectors, in the order of the images."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": EmbedRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "model": {"type": "string"},
                            "kind": {"type": "string", "enum": ["latent", "latent_tokens", "encoder"]},
                        },
                    }
                },
            },
        }
    },
)
async def create_embeddings(
    request: Request,
    principal: GenerateCaller,
    services: ServicesDep,
) -> EmbeddingList:
    tenant, settings = principal.tenant, services.settings
    body, uploads = await _read_request(request, settings.gateway.max_dataset_file_bytes)
    model = resolve_model(services.models, body.model)
    fields = model.job_fields(body.model)
    job_id = new_job_id()
    keys = await run_in_threadpool(_prepare, services, tenant, body, uploads, job_id)
    payload = {"model": fields["model"], "images": keys, "kind": body.kind}
    job = build_job(job_id, JobKind.embed, tenant, fields["model"], payload, {}, None).model_copy(
        update=fields
    )
    try:
        await admit(services.store, services.queue, settings.limits, job)
    except Exception:
        await run_in_threadpool(services.storage.delete_keys, keys)
        raise
    done = await finished_within(services, job, settings.gateway.max_wait_s, True, "embeddings")
    if done.status is JobStatus.succeeded:
        result = await run_in_threadpool(_vectors, services.storage, tenant, job.id)
        vectors = result["embeddings"]
        first = vectors[0]
        dimensions = len(first[0]) if first and isinstance(first[0], list) else len(first)
        return EmbeddingList(
            model=done.model or fields["model"],
            kind=body.kind,
            dimensions=dimensions,
            data=[Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
            job_id=job.id,
        )
    if done.error is not None and done.error.reason == "invalid_input":
        raise invalid("images", done.error.message)  # this API's 422, naming the field
    raise job_problem(done)
