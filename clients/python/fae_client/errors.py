"""Typed exceptions. Every HTTP error of the API is RFC 9457 problem JSON; `APIError` carries its fields and the
subclass names the status, so callers catch what they can handle (`except RateLimitError as e: e.retry_after`)."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx


class FAEError(Exception):
    """Base of every exception this package raises."""


class APIConnectionError(FAEError):
    """The server could not be reached, or the connection broke or timed out (after any retries)."""


class APIError(FAEError):
    """An HTTP error answer, with the problem JSON's fields (`problem` holds all of them, extensions too)."""

    def __init__(self, status: int, problem: dict[str, Any], headers: httpx.Headers | None = None) -> None:
        self.status = status
        self.problem = problem
        self.headers = headers or httpx.Headers()
        self.type: str = str(problem.get("type") or "about:blank")
        self.title: str | None = _str_or_none(problem.get("title"))
        self.detail: str | None = _str_or_none(problem.get("detail"))
        self.instance: str | None = _str_or_none(problem.get("instance"))
        self.request_id: str | None = _str_or_none(problem.get("request_id")) or self.headers.get(
            "x-request-id"
        )
        self.retry_after: float | None = _number_or_none(problem.get("retry_after"))
        if self.retry_after is None:
            self.retry_after = parse_retry_after(self.headers.get("retry-after"))
        errors = problem.get("errors")
        self.errors: list[dict[str, Any]] = errors if isinstance(errors, list) else []
        super().__init__(f"{status} {self.title or 'error'}: {self.detail or ''}".rstrip(": "))


class BadRequestError(APIError):
    """400: the body does not parse (e.g. invalid JSON)."""


class AuthenticationError(APIError):
    """401: no API key, or an unknown one."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope (generate, finetune, admin), or a download URL's signature is bad."""


class NotFoundError(APIError):
    """404: no such job, adapter or route for this key (other tenants' resources are not disclosed)."""


class ConflictError(APIError):
    """409: the resource's state forbids it (e.g. deleting a job that has not finished)."""


class ContentTooLargeError(APIError):
    """413: a body, upload or dataset file over the server's limits."""


class UnsupportedMediaTypeError(APIError):
    """415: a missing or wrong Content-Type."""


class UnprocessableEntityError(APIError):
    """422: invalid input; `errors` lists each field (`loc`, `msg`, `type`)."""


class RateLimitError(APIError):
    """429: rate, in-flight or queue limit; `retry_after` says when to try again."""


class InternalServerError(APIError):
    """500 and other 5xx answers without a class of their own."""


class ServiceUnavailableError(APIError):
    """503: the job store or storage is unreachable, or the server is busy; `retry_after` is set."""


STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: ContentTooLargeError,
    415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The typed exception for an error answer (its body already read)."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
    else:  # not problem JSON (a proxy's error page): keep the text as the detail
        problem = {
            "title": response.reason_phrase,
            "status": response.status_code,
            "detail": response.text[:500],
        }
    status = response.status_code
    cls = STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIError)
    return cls(status, problem, response.headers)


class JobWaitTimeout(FAEError, TimeoutError):
    """`jobs.wait(timeout=...)` ran out before the job finished; `job` is its latest state."""

    def __init__(self, job: Any, timeout: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} is still {job.status} after {timeout:g} s")


class JobFailedError(FAEError):
    """The job did not succeed, so it has no images; `job.error` says why."""

    def __init__(self, job: Any) -> None:
        self.job = job
        reason = f": {job.error.reason}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} is {job.status}{reason}")


class WebhookVerificationError(FAEError):
    """A webhook delivery whose signature or timestamp does not check out: do not trust its body."""


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
