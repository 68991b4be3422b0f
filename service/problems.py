"""RFC 9457 problem details: every error the API returns is `application/problem+json`.

Routes raise `ProblemError` (or a job-store error, mapped here); FastAPI's validation errors, routing
errors (404/405) are turned into problems by the handlers that `install_problem_handlers` registers; anything
unexpected (500, logged, internals hidden) by `service.middleware.GatewayMiddleware`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.jobstore import IdempotencyConflict, InflightLimitExceeded, InvalidTransition, JobNotFound
from core.logs import request_id_var
from core.storage import StorageUnavailable

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:fae-serve:problem:"
# One title per status code (RFC 9110's names): a client may show or switch on it; `type` says which problem.
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FieldError(BaseModel):
    loc: list[str] = Field(description='Where: `["body", "n"]`, `["query", "limit"]`...')
    msg: str
    type: str = Field(description="Machine-readable kind, e.g. `less_than_equal`, `extra_forbidden`.")


class Problem(BaseModel):
    """RFC 9457 problem details: every error this API answers (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="`urn:fae-serve:problem:<slug>` (or `about:blank`): what went wrong.")
    title: str = Field(description="The status code's name: one title per status.")
    status: int
    detail: str = Field(description="What happened and what to do, for a person.")
    instance: str | None = None
    request_id: str | None = Field(default=None, description="The `X-Request-ID` to quote when reporting it.")
    errors: list[FieldError] | None = Field(default=None, description="422: each invalid field.")
    retry_after: int | None = Field(
        default=None, description="429 and 503: seconds to wait (also `Retry-After`)."
    )


def problem_type(slug: str | None) -> str:
    return TYPE_PREFIX + slug if slug else "about:blank"


def problem_body(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    slug: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """The problem JSON. `title` only stands in for a missing `detail`: the answer's title is the status code's
    (`TITLES`), whoever raised it."""
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": _phrase(status),
        "status": status,
        "detail": detail or title or _phrase(status),
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extensions.items() if v is not None})
    return body


def problem_response(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, title, detail, slug, **extensions),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


class ProblemError(Exception):
    """Raise from a route or dependency to answer with a problem."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title or _phrase(status))
        self.status, self.title, self.detail, self.slug = status, title, detail, slug
        self.headers, self.extensions = headers, extensions

    def response(self) -> JSONResponse:
        return problem_response(
            self.status, self.title, self.detail, self.slug, self.headers, **self.extensions
        )


def not_found(what: str = "job", identifier: str | None = None) -> ProblemError:
    """404 for missing resources *and* other tenants' resources: existence is not disclosed."""
    detail = f"no {what} {identifier!r} for this API key" if identifier else f"no such {what}"
    return ProblemError(404, "Not Found", detail, slug="not-found")


def too_many_requests(detail: str, retry_after_s: float, slug: str = "rate-limited") -> ProblemError:
    seconds = max(1, int(retry_after_s + 0.999))
    return ProblemError(
        429,
        "Too Many Requests",
        detail,
        slug=slug,
        headers={"Retry-After": str(seconds)},
        retry_after=seconds,
    )


def _phrase(status: int) -> str:
    if status in TITLES:
        return TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def invalid_json(document: Any, position: int, reason: str) -> ProblemError:
    """400 for a body that does not parse as JSON, naming where (line and column, 1-based, and the offset)."""
    raw = document if isinstance(document, bytes | bytearray) else None
    text = raw.decode("utf-8", "replace") if raw is not None else str(document or "")
    position = max(0, min(position, len(text)))
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    detail = f"the body is not valid JSON: {reason} at line {line}, column {column} (char {position})"
    return ProblemError(400, None, detail, "invalid-json", line=line, column=column, position=position)


def unsupported_media_type(sent: str | None, expected: str) -> ProblemError:
    got = f"Content-Type {sent!r}" if sent else "no Content-Type"
    return ProblemError(
        415, None, f"send the body as {expected} (this request has {got})", "unsupported-media-type"
    )


def _field_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without echoing inputs (they may be large or sensitive)."""
    cleaned = []
    for error in errors:
        cleaned.append(
            {
                "loc": [str(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "invalid value")),
                "type": str(error.get("type", "value_error")),
            }
        )
    return cleaned


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        json_error = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if json_error is not None:
            position = json_error["loc"][-1]
            reason = json_error.get("ctx", {}).get("error", "invalid JSON")
            return invalid_json(exc.body, position if isinstance(position, int) else 0, reason).response()
        if isinstance(exc.body, bytes | bytearray):
            # FastAPI leaves the body unparsed unless Content-Type is JSON: the caller sent the wrong type.
            return unsupported_media_type(request.headers.get("content-type"), "application/json").response()
        errors = _field_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(part for part in first["loc"] if part != "body") or "request"
        detail = f"{where}: {first['msg']}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        return problem_response(422, "Invalid request", detail, slug="validation-error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 204:  # nothing to send (e.g. an event stream whose last event the client has)
            return Response(status_code=204)
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path!r}; see /docs for the API"
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the body does not parse as JSON (malformed, or nested too deeply)"
        slug = "body-too-large" if exc.status_code == 413 else None
        return problem_response(exc.status_code, None, detail, slug, headers=getattr(exc, "headers", None))

    @app.exception_handler(JobNotFound)
    async def _job_not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return not_found("job", exc.job_id).response()

    @app.exception_handler(InvalidTransition)
    async def _conflict(request: Request, exc: InvalidTransition) -> JSONResponse:
        return problem_response(409, "Conflict", str(exc), slug="invalid-transition")

    @app.exception_handler(IdempotencyConflict)
    async def _idempotency(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        detail = "this Idempotency-Key was already used with a different request body; use a new key"
        return problem_response(422, "Idempotency key reused", detail, slug="idempotency-key-reused")

    @app.exception_handler(InflightLimitExceeded)
    async def _inflight(request: Request, exc: InflightLimitExceeded) -> JSONResponse:
        detail = f"this tenant already has {exc.limit} unfinished jobs; retry when some finish"
        return too_many_requests(detail, 5, slug="inflight-limit").response()

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(request: Request, exc: StorageUnavailable) -> JSONResponse:
        logger.error("object storage unavailable: %s", exc)
        return problem_response(
            503,
            "Service Unavailable",
            "object storage is unreachable; nothing was kept, retry shortly",
            slug="storage-unavailable",
            headers={"Retry-After": "10"},
            retry_after=10,
        )

    @app.exception_handler(redis.RedisError)
    async def _store_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        logger.error("job store unavailable: %s", type(exc).__name__)
        return problem_response(
            503,
            "Service Unavailable",
            "the job store is unreachable; retry shortly",
            slug="store-unavailable",
            headers={"Retry-After": "5"},
        )
