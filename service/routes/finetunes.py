"""Fine-tunes: `POST /v1/finetunes` (multipart images/zip, or JSON with an `s3_prefix`), read, cancel.

The dataset is stored before the job exists; the worker's `fae.finetune` task trains the adapter, whose id
(`adapter_id` on the finished job) is usable in `POST /v1/generate` at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.contract import (
    FINETUNE_MAX_IMAGES,
    FINETUNE_MIN_IMAGES,
    FinetuneParams,
    Job,
    JobKind,
    JobStatus,
    dataset_key,
)
from core.jobstore import body_hash
from core.jobstore.base import Admission, AdmissionOutcome, RateBudget
from core.storage import InvalidKey, check_key
from service.admission import admit, build_job, check_admission, new_job_id, rate_headers
from service.datasets import IMAGE_EXTENSIONS, DatasetWriter, UploadRejected, UploadTooLarge
from service.deps import FinetuneCaller, Services, ServicesDep
from service.edges import GatewayRoute
from service.presenters import cancel_job, job_page, owned_job, present_job
from service.problems import ProblemError, unsupported_media_type
from service.schemas import JobId, JobPage
from service.validation import check_webhook, invalid, parse_json, parse_json_body, resolve_model

router = APIRouter(prefix="/v1/finetunes", tags=["finetunes"], route_class=GatewayRoute)

# The README's `images` and the spec's `files` name the same thing; the older names stay accepted.
FILE_FIELDS = ("files", "images", "file", "dataset")
_FORM_LIMITS = {"max_files": 10_000, "max_fields": 100, "max_part_size": 1024 * 1024}
# The request body's two forms, described in service/openapi.py (components FinetuneUpload, FinetuneParams).
_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/FinetuneUpload"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/FinetuneParams"}},
        },
    }
}
_HASH_CHUNK = 1024 * 1024


def _validate_params(raw: dict[str, Any], strict: bool) -> FinetuneParams:
    """Strict for a JSON body (`"steps": "20"` is refused); form fields are text, so they are converted."""
    try:
        return FinetuneParams.model_validate(raw, strict=strict)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def _read_request(request: Request) -> tuple[FinetuneParams, list[UploadFile], Any]:
    """(params, uploads, form to close). JSON bodies carry params only; multipart carries both."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        raw = parse_json_body(await request.body())
        if not isinstance(raw, dict):
            raise invalid("body", "the JSON body must be an object")
        return _validate_params(raw, strict=True), [], None
    if not content_type.startswith("multipart/form-data"):
        raise unsupported_media_type(
            request.headers.get("content-type"),
            "multipart/form-data (dataset files and parameters) or application/json (with s3_prefix)",
        )
    form = await request.form(**_FORM_LIMITS)
    uploads: list[UploadFile] = []
    raw: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in FILE_FIELDS:
                await form.close()
                raise invalid(name, "upload dataset files in a field named 'files' (or 'images')")
            uploads.append(value)
        elif name == "metadata":
            try:
                raw[name] = parse_json(value, "metadata")
            except ProblemError:
                await form.close()
                raise
        else:
            raw[name] = value
    try:
        return _validate_params(raw, strict=False), uploads, form
    except RequestValidationError:
        await form.close()
        raise


def _checked_s3_prefix(prefix: str, tenant: str) -> str:
    normalized = prefix.strip().lstrip("/")
    normalized = normalized if normalized.endswith("/") else normalized + "/"
    own = f"tenants/{tenant}/"
    try:
        check_key(normalized.rstrip("/"))
    except InvalidKey as exc:
        raise invalid("s3_prefix", "not a valid object prefix") from exc
    if not normalized.startswith(own) or normalized == own:
        raise invalid("s3_prefix", f"must lie under {own!r} (your tenant's part of the bucket)")
    return normalized


def _request_digest(params: FinetuneParams, uploads: list[UploadFile]) -> str:
    """What makes two fine-tune requests the same for `Idempotency-Key`: the parameters and every file's name
    and content (hashed from the spooled upload, before anything is stored)."""
    files = []
    for upload in uploads:
        upload.file.seek(0)
        digest = hashlib.sha256()
        while chunk := upload.file.read(_HASH_CHUNK):
            digest.update(chunk)
        files.append([upload.filename or "", digest.hexdigest()])
    return body_hash({"params": params.model_dump(mode="json"), "files": files})


def _check_image_count(images: int, field: str) -> None:
    """The trainer's limits (core.contract), refused here at once rather than by the worker minutes later."""
    if images < FINETUNE_MIN_IMAGES:
        raise invalid(
            field,
            f"the dataset has {images} usable images (PNG, JPEG or WebP); at least {FINETUNE_MIN_IMAGES} are needed",
        )
    if images > FINETUNE_MAX_IMAGES:
        raise invalid(field, f"the dataset has {images} images; at most {FINETUNE_MAX_IMAGES} are accepted")


def _store_uploads(writer: DatasetWriter, uploads: list[UploadFile]) -> None:
    for upload in uploads:
        upload.file.seek(0)
        writer.add_upload(upload.filename or "upload", upload.file)
    writer.check_training_allowed()


@router.post(
    "",
    response_model=Job,
    status_code=202,
    summary="Start a fine-tune (LoRA adapter) from uploaded images or an S3 prefix",
    description=f"Multipart: images (PNG, JPEG, WebP), captions (.txt) or .zip archives in `files` (or "
    f"`images`), {FINETUNE_MIN_IMAGES} to {FINETUNE_MAX_IMAGES} usable images, beside the parameters; or a JSON "
    "body with `s3_prefix`. A dataset the trainer would refuse is refused here (422). `Idempotency-Key`: a "
    "retry with the same key, parameters and files gets the first job back (`Idempotent-Replayed: true`) "
    "and starts nothing.",
    openapi_extra=_OPENAPI_BODY,
)
async def create_finetune(
    request: Request,
    response: Response,
    principal: FinetuneCaller,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Job:
    store, settings, tenant = services.store, services.settings, principal.tenant
    if not idempotency_key:  # refused before the upload is read; a keyed retry may be a replay, read it first
        await check_admission(store, settings.limits, tenant, JobKind.finetune)
    params, uploads, form = await _read_request(request)
    digest: str | None = None
    try:
        if idempotency_key:
            digest = await run_in_threadpool(_request_digest, params, uploads)
            early = await check_admission(
                store, settings.limits, tenant, JobKind.finetune, idempotency_key, digest
            )
            if early.outcome is AdmissionOutcome.replayed and early.job is not None:
                return await _answer(early.job, services, request, response, early.budget, replayed=True)
        admission, job = await _admit_new(services, tenant, params, uploads, idempotency_key, digest)
    finally:
        if form is not None:
            await form.close()
    replayed = admission.outcome is AdmissionOutcome.replayed
    return await _answer(admission.job or job, services, request, response, admission.budget, replayed)


async def _admit_new(
    services: Services,
    tenant: str,
    params: FinetuneParams,
    uploads: list[UploadFile],
    idempotency_key: str | None,
    digest: str | None,
) -> tuple[Admission, Job]:
    """Store the dataset under a new job id, check it, admit the job. Nothing stays behind for a job that will
    not run: a refusal, or a concurrent retry with the same key that won (its job is the answer), removes the
    dataset this request stored."""
    store, storage, settings = services.store, services.storage, services.settings
    job_id = new_job_id()
    prefix = dataset_key(tenant, job_id)
    try:
        model = await run_in_threadpool(resolve_model, services.models, params.model)
        webhook_url = await run_in_threadpool(check_webhook, params.webhook_url, settings.webhooks)
        payload = params.model_dump(mode="json")
        model_fields = model.job_fields(params.model)
        payload["model"] = model_fields["model"]
        if uploads and params.s3_prefix:
            raise invalid("s3_prefix", "give either uploaded files or an s3_prefix, not both")
        if params.s3_prefix:
            payload["s3_prefix"] = _checked_s3_prefix(params.s3_prefix, tenant)
            keys = await run_in_threadpool(storage.list, payload["s3_prefix"])
            if not keys:
                raise invalid("s3_prefix", f"nothing is stored under {payload['s3_prefix']!r}")
            images = sum(1 for key in keys if Path(key).suffix.lower() in IMAGE_EXTENSIONS)
            zipped = any(key.lower().endswith(".zip") for key in keys)
            if not zipped:  # a zip's images are counted by the worker when it unpacks it
                _check_image_count(images, "s3_prefix")
        elif uploads:
            writer = DatasetWriter(storage, prefix, settings.gateway)
            try:
                with services.uploads.hold():
                    await run_in_threadpool(_store_uploads, writer, uploads)
            except UploadTooLarge as exc:
                raise ProblemError(413, None, str(exc), "upload-too-large") from exc
            except UploadRejected as exc:
                raise invalid("files", str(exc)) from exc
            _check_image_count(writer.summary.images, "files")
            payload["dataset_images"] = writer.summary.images
        else:
            raise invalid("files", "upload images (or a zip) in `files` (or `images`), or give an s3_prefix")
        job = build_job(
            job_id, JobKind.finetune, tenant, payload["model"], payload, params.metadata, webhook_url
        )
        job = job.model_copy(update=model_fields)
        admission = await admit(store, services.queue, settings.limits, job, idempotency_key, digest)
    except Exception:
        if uploads:
            await run_in_threadpool(storage.delete_prefix, prefix)
        raise
    if admission.outcome is AdmissionOutcome.replayed and uploads:
        await run_in_threadpool(storage.delete_prefix, prefix)  # the other request's dataset is the one used
    return admission, job


async def _answer(
    job: Job, services: Services, request: Request, response: Response, budget: RateBudget, replayed: bool
) -> Job:
    response.headers.update(rate_headers(budget))
    response.headers["Location"] = f"/v1/finetunes/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
        response.status_code = 200 if job.status.terminal else 202
    return await run_in_threadpool(present_job, job, services, request)


@router.get("", response_model=JobPage, summary="List the caller's fine-tunes, newest first")
def list_finetunes(
    principal: FinetuneCaller,
    services: ServicesDep,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> JobPage:
    return job_page(services, request, principal.tenant, JobKind.finetune, limit, cursor)


@router.get("/{job_id}", response_model=Job, summary="A fine-tune: status, progress and loss, adapter id")
def get_finetune(job_id: JobId, principal: FinetuneCaller, services: ServicesDep, request: Request) -> Job:
    job = owned_job(services.store, principal.tenant, job_id, JobKind.finetune)
    return present_job(job, services, request)


@router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a fine-tune")
def cancel_finetune(
    job_id: JobId,
    principal: FinetuneCaller,
    services: ServicesDep,
    request: Request,
    response: Response,
) -> Job:
    job = owned_job(services.store, principal.tenant, job_id, JobKind.finetune)
    result = cancel_job(services, job)
    response.status_code = 202 if result.status is JobStatus.running else 200
    return present_job(result, services, request)
