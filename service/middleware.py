"""Pure ASGI middleware: request context + metrics + access log, request body size limits, and the last-resort
500 that keeps the connection open.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses stay streamed and context variables set by
dependencies stay visible here after the response.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.logs import job_id_var, request_id_var, tenant_var
from service.problems import problem_response

logger = logging.getLogger(__name__)
access_log = logging.getLogger("fae.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID, echoed back), then counts and logs it by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
        request_id_var.set(request_id)
        job_id_var.set(None)
        tenant_var.set(None)
        status_code = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            metrics.HTTP_REQUESTS.labels(route=template, method=method, status=str(status_code)).inc()
            metrics.HTTP_DURATION.labels(route=template, method=method).observe(elapsed)
            # The path only: query strings can carry URL signatures.
            access_log.info(
                "%s %s %d",
                method,
                scope.get("path", ""),
                status_code,
                extra={"route": template, "status_code": status_code, "duration_s": round(elapsed, 4)},
            )


class UnexpectedErrorMiddleware:
    """An unhandled exception becomes a 500 problem here, and stops here. Starlette's own last-resort handler
    answers and then re-raises, so the server closes the connection and a keep-alive client's next request on
    it fails; answered here, the connection stays usable. Once a response has started (a stream), nothing can
    be answered any more, so the error goes on up."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            detail = "an unexpected error occurred; it was logged (quote the request_id when reporting it)"
            await problem_response(500, None, detail, slug="internal")(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, and by counting what actually arrives."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope.get("path", ""))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                response = problem_response(400, None, "invalid Content-Length header", slug="bad-request")
                await response(scope, receive, send)
                return
            if too_large:
                response = problem_response(
                    413, None, f"the request body is larger than {limit} bytes", slug="body-too-large"
                )
                await response(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)
