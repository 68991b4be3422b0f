"""Fine-tunes: `POST /v1/finetunes` (multipart images/zip, or JSON with an `s3_prefix`), read, cancel.

The dataset is stored before the job exists; the worker's `fae.finetune` task trains the adapter, whose id
(`adapter_id` on the finished job) is usable in `POST /v1/generate` at once.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.contract import FinetuneParams, Job, JobKind, JobStatus, dataset_key
from core.storage import InvalidKey, check_key
from service.admission import admit, build_job, check_admission, new_job_id, rate_headers
from service.datasets import DatasetWriter, UploadRejected, UploadTooLarge
from service.deps import FinetuneCaller, ServicesDep
from service.presenters import cancel_job, job_page, owned_job, present_job
from service.problems import ProblemError
from service.schemas import JobId, JobPage
from service.validation import check_webhook, invalid, parse_json, resolve_model

router = APIRouter(prefix="/v1/finetunes", tags=["finetunes"])

FILE_FIELDS = ("files", "file", "dataset")
_FORM_LIMITS = {"max_files": 10_000, "max_fields": 100, "max_part_size": 1024 * 1024}
_OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Images (PNG, JPEG, WebP), captions (.txt), or .zip archives.",
                        },
                        **{
                            name: {"type": "string", "description": field.description or name}
                            for name, field in FinetuneParams.model_fields.items()
                        },
                    },
                }
            },
            "application/json": {"schema": FinetuneParams.model_json_schema()},
        },
    }
}


def _validate_params(raw: dict[str, Any]) -> FinetuneParams:
    try:
        return FinetuneParams.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def _read_request(request: Request) -> tuple[FinetuneParams, list[UploadFile], Any]:
    """(params, uploads, form to close). JSON bodies carry params only; multipart carries both."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        raw = parse_json(await request.body(), "body")
        if not isinstance(raw, dict):
            raise invalid("body", "the JSON body must be an object")
        return _validate_params(raw), [], None
    if not content_type.startswith("multipart/form-data"):
        raise ProblemError(
            415,
            "Unsupported Media Type",
            "send multipart/form-data (dataset files + parameters) or application/json (with s3_prefix)",
            "unsupported-media-type",
        )
    form = await request.form(**_FORM_LIMITS)
    uploads: list[UploadFile] = []
    raw: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in FILE_FIELDS:
                await form.close()
                raise invalid(name, f"upload dataset files in a field named {FILE_FIELDS[0]!r}")
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
        return _validate_params(raw), uploads, form
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


def _store_uploads(writer: DatasetWriter, uploads: list[UploadFile]) -> None:
    for upload in uploads:
        upload.file.seek(0)
        writer.add_upload(upload.filename or "upload", upload.file)


@router.post(
    "",
    response_model=Job,
    status_code=202,
    summary="Start a fine-tune (LoRA adapter) from uploaded images or an S3 prefix",
    openapi_extra=_OPENAPI_BODY,
)
async def create_finetune(
    request: Request,
    response: Response,
    principal: FinetuneCaller,
    services: ServicesDep,
) -> Job:
    store, storage, settings, tenant = services.store, services.storage, services.settings, principal.tenant
    await check_admission(store, settings.limits, tenant, JobKind.finetune)
    params, uploads, form = await _read_request(request)
    job_id = new_job_id()
    prefix = dataset_key(tenant, job_id)
    try:
        model = await run_in_threadpool(resolve_model, services.models, params.model)
        webhook_url = await run_in_threadpool(check_webhook, params.webhook_url, settings.webhooks)
        payload = params.model_dump(mode="json")
        payload["model"] = model.name
        if uploads and params.s3_prefix:
            raise invalid("s3_prefix", "give either uploaded files or an s3_prefix, not both")
        if params.s3_prefix:
            payload["s3_prefix"] = _checked_s3_prefix(params.s3_prefix, tenant)
            if not await run_in_threadpool(storage.list, payload["s3_prefix"]):
                raise invalid("s3_prefix", f"nothing is stored under {payload['s3_prefix']!r}")
        elif uploads:
            writer = DatasetWriter(storage, prefix, settings.gateway)
            try:
                with services.uploads.hold():
                    await run_in_threadpool(_store_uploads, writer, uploads)
            except UploadTooLarge as exc:
                raise ProblemError(413, "Content Too Large", str(exc), "upload-too-large") from exc
            except UploadRejected as exc:
                raise invalid("files", str(exc)) from exc
            if writer.summary.images == 0:
                raise invalid("files", "the dataset has no images (PNG, JPEG or WebP)")
            payload["dataset_images"] = writer.summary.images
        else:
            raise invalid("files", "upload images (or a zip) in `files`, or give an s3_prefix")
        job = build_job(job_id, JobKind.finetune, tenant, model.name, payload, params.metadata, webhook_url)
        admission = await admit(store, services.queue, settings.limits, job)
    except Exception:
        if uploads:  # nothing may stay behind for a job that will not run
            await run_in_threadpool(storage.delete_prefix, prefix)
        raise
    finally:
        if form is not None:
            await form.close()
    response.headers.update(rate_headers(admission.budget))
    response.headers["Location"] = f"/v1/finetunes/{job.id}"
    return await run_in_threadpool(present_job, admission.job or job, services, request)


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
