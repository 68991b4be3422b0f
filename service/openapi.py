"""The OpenAPI document as a contract: short stable operation ids, the problem JSON (RFC 9457) every error
really is, the error statuses each route can answer, examples on every request and response, the fine-tune
upload's fields, and the webhook payloads (OpenAPI 3.1 `webhooks`). Swagger UI and ReDoc are served from
files installed with the gateway (`fastapi-offline`'s), never from a CDN.

Routes stay plain FastAPI; `install_openapi` finishes the generated document once, on first request.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from core.contract import FinetuneParams, Job, WebhookEvent
from service.openapi_examples import (
    ERROR_DETAILS,
    JOB_EXAMPLE,
    MULTIPART_EXAMPLES,
    REQUEST_EXAMPLES,
    RESPONSE_EXAMPLES,
)
from service.problems import PROBLEM_MEDIA_TYPE, TITLES, Problem

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_PATH = "/docs/assets"
REF = "#/components/schemas/{model}"

# (method, path) -> operationId: short and stable, whatever the handlers are called. A route missing here
# gets its handler's name in camelCase (tests/service/test_openapi.py lists every id).
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("POST", "/v1/generate"): "generate",
    ("POST", "/v1/images/generations"): "createImage",
    ("GET", "/v1/jobs"): "listJobs",
    ("GET", "/v1/jobs/{job_id}"): "getJob",
    ("POST", "/v1/jobs/{job_id}/cancel"): "cancelJob",
    ("DELETE", "/v1/jobs/{job_id}"): "deleteJob",
    ("GET", "/v1/jobs/{job_id}/events"): "streamJobEvents",
    ("POST", "/v1/finetunes"): "createFinetune",
    ("GET", "/v1/finetunes"): "listFinetunes",
    ("GET", "/v1/finetunes/{job_id}"): "getFinetune",
    ("POST", "/v1/finetunes/{job_id}/cancel"): "cancelFinetune",
    ("GET", "/v1/models"): "listModels",
    ("GET", "/v1/adapters"): "listAdapters",
    ("GET", "/v1/adapters/{adapter_id}"): "getAdapter",
    ("DELETE", "/v1/adapters/{adapter_id}"): "deleteAdapter",
    ("GET", "/v1/adapters/{adapter_id}/download"): "downloadAdapter",
    ("GET", "/v1/webhooks/secret"): "getWebhookSecret",
    ("POST", "/v1/webhooks/secret/rotate"): "rotateWebhookSecret",
    ("GET", "/v1/files/{key}"): "getFile",
    ("HEAD", "/v1/files/{key}"): "headFile",
    ("GET", "/v1/admin/dead-letters"): "listDeadLetters",
    ("POST", "/v1/admin/dead-letters/{job_id}/replay"): "replayDeadLetter",
    ("GET", "/healthz"): "healthz",
    ("GET", "/readyz"): "readyz",
    ("GET", "/metrics"): "metrics",
    ("POST", "/v1/provenance/verify"): "verifyProvenance",
    ("POST", "/v1/embeddings"): "createEmbeddings",
}
# Routes that answer errors in another shape (the OpenAI-compatible route answers OpenAI's): left as declared.
FOREIGN_ERRORS = frozenset({"createImage"})
# Errors beyond those every route of its kind can answer (see `error_statuses`).
EXTRA_ERRORS: dict[str, tuple[int, ...]] = {
    "generate": (429,),
    "createFinetune": (429,),
    "deleteJob": (409,),
    "getFile": (403,),
    "readyz": (503,),
    "createEmbeddings": (429, 504),
}
NO_STORE = frozenset({"healthz", "getFile", "metrics"})  # answer without the job store or storage


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def operation_id(route: APIRoute) -> str:
    """FastAPI's `generate_unique_id_function`: the table's id for the route, else its handler's name."""
    method = sorted(route.methods)[0]
    path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path_format)
    return OPERATION_IDS.get((method, path), _camel(route.name))


class WebhookPayload(BaseModel):
    """What a webhook delivers (Standard Webhooks: signed in `webhook-signature` over `webhook-id`,
    `webhook-timestamp` and the body; verify it with the tenant's secret from `GET /v1/webhooks/secret`)."""

    type: WebhookEvent
    id: str = Field(description="The `webhook-id`: the same on every retry of one event (deduplicate on it).")
    timestamp: datetime = Field(description="When the event happened.")
    data: Job = Field(
        description="The job as `GET /v1/jobs/{id}` shows it, without `webhook_url` and `worker_id`."
    )


def _finetune_upload_schema() -> dict[str, Any]:
    """The multipart form of `POST /v1/finetunes`: the files, and every FinetuneParams field as a typed form
    field (`metadata` as JSON text)."""
    params = FinetuneParams.model_json_schema(ref_template=REF)
    properties: dict[str, Any] = {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "Images (PNG, JPEG, WebP), caption files (.txt beside an image of the same name) or "
            ".zip archives of them; `images` is accepted as the field name too.",
        }
    }
    for name, schema in params["properties"].items():
        if name == "metadata":
            schema = {"type": "string", "description": "Free-form JSON object, as JSON text."}
        properties[name] = schema
    return {
        "title": "FinetuneUpload",
        "type": "object",
        "description": "The dataset files beside the fine-tune's parameters (form fields).",
        "properties": properties,
        "required": ["files"],
    }


def error_statuses(operation: str, method: str, path: str, secured: bool, has_body: bool) -> list[int]:
    statuses = {422}  # query (and body) validation, unknown query parameters
    if secured:
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if has_body:
        statuses |= {400, 413, 415}
    if operation not in NO_STORE:
        statuses.add(503)
    statuses.update(EXTRA_ERRORS.get(operation, ()))
    return sorted(statuses)


def _problem_response(status: int) -> dict[str, Any]:
    example: dict[str, Any] = {
        "type": f"urn:fae-serve:problem:{ERROR_DETAILS[status][0]}",
        "title": TITLES[status],
        "status": status,
        "detail": ERROR_DETAILS[status][1],
        "request_id": "7d2c0a4f9e3b4c5d8a1b2c3d4e5f6a7b",
    }
    if status == 422:
        example["errors"] = [
            {
                "loc": ["body", "n"],
                "msg": "Input should be less than or equal to 8",
                "type": "less_than_equal",
            }
        ]
    headers: dict[str, Any] = {}
    if status in (429, 503):
        example["retry_after"] = 5
        headers["Retry-After"] = {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
    response: dict[str, Any] = {
        "description": f"{TITLES[status]} (RFC 9457 problem details).",
        "content": {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": REF.format(model="Problem")}, "example": example}
        },
    }
    if headers:
        response["headers"] = headers
    return response


def _add_components(
    schema: dict[str, Any], *models: type[BaseModel], mode: Literal["validation", "serialization"]
) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        generated = model.model_json_schema(ref_template=REF, mode=mode)
        for name, definition in generated.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[model.__name__] = generated


def _finish(schema: dict[str, Any]) -> dict[str, Any]:
    _add_components(schema, Problem, WebhookPayload, mode="serialization")  # what the API sends
    _add_components(schema, FinetuneParams, mode="validation")  # what it reads
    components = schema["components"]["schemas"]
    components["FinetuneUpload"] = _finetune_upload_schema()
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's shape, which this API never sends
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            _finish_operation(operation, method.upper(), path)
    schema["webhooks"] = {event: {"post": _webhook(event)} for event in get_args(WebhookEvent)}
    return schema


def _webhook(event: str) -> dict[str, Any]:
    """One webhook event (OpenAPI 3.1 `webhooks`): the payload the job's `webhook_url` receives."""
    example = {
        "type": event,
        "id": f"msg_{JOB_EXAMPLE['id']}_{event.removeprefix('job.')}",
        "timestamp": "2026-12-01T12:00:03.200000+00:00",
        "data": {k: v for k, v in JOB_EXAMPLE.items() if k not in ("webhook_url", "worker_id")},
    }
    return {
        "operationId": "webhook" + "".join(part.title() for part in re.split(r"[._]", event)),
        "summary": f"`{event}`: sent to the job's `webhook_url`",
        "description": WebhookPayload.__doc__,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF.format(model="WebhookPayload")},
                    "example": example,
                }
            },
        },
        "responses": {
            "200": {"description": "Received (any 2xx). Other answers are retried with backoff; 410 stops."}
        },
    }


def _finish_operation(operation: dict[str, Any], method: str, path: str) -> None:
    name = operation.get("operationId", "")
    responses = operation.setdefault("responses", {})
    for status, response in responses.items():
        for media, content in response.get("content", {}).items():
            if "example" not in content and "examples" not in content and name in RESPONSE_EXAMPLES:
                example = RESPONSE_EXAMPLES[name].get(int(status)) if status.isdigit() else None
                if example is not None and "json" in media:
                    content["example"] = example
    body = operation.get("requestBody", {}).get("content", {})
    if "application/json" in body and name in REQUEST_EXAMPLES:
        body["application/json"].setdefault("example", REQUEST_EXAMPLES[name])
    if "multipart/form-data" in body and name in MULTIPART_EXAMPLES:
        body["multipart/form-data"].setdefault("example", MULTIPART_EXAMPLES[name])
    if "HTTPValidationError" in str(responses.get("422", "")):
        del responses["422"]  # FastAPI's validation shape, which this API never sends
    if name in FOREIGN_ERRORS:
        return
    secured = bool(operation.get("security"))
    for status in error_statuses(name, method, path, secured, bool(body)):
        responses[str(status)] = _problem_response(status)


def install_openapi(app: FastAPI) -> None:
    """The finished document at `/openapi.json`, and Swagger UI (`/docs`) and ReDoc (`/redoc`) from local files."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                webhooks=app.webhooks.routes,
                tags=app.openapi_tags,  # the sections' reading order (routes are listed in matching order)
            )
            app.openapi_schema = _finish(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
