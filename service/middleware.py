"""The gateway's one pure ASGI middleware: request context + metrics + access log, request body size limits,
and the last-resort 500 that keeps the connection open.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses stay streamed and context variables set by
dependencies stay visible here after the response. One layer, not three: every layer is a coroutine call
and a wrapped `send` per request, on a path where the gateway's CPU per request is what limits it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client.metrics import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.logs import job_id_var, log_access, request_id_var, tenant_var, traceparent_var
from service.edges import valid_traceparent
from service.problems import problem_response

logger = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NO_BODY = frozenset(("GET", "HEAD", "OPTIONS", "DELETE"))


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class GatewayMiddleware:
    """Per request, outermost first:

    - an id (X-Request-ID if valid, else new; echoed back) and a fresh logging context;
    - 413 for bodies over `limit_for(method, path)`: by Content-Length up front, and by counting what arrives;
    - an unhandled exception becomes a 500 problem here, and stops here. Starlette's own last-resort handler
      answers and then re-raises, so the server closes the connection and a keep-alive client's next request
      on it fails; answered here, the connection stays usable. Once a response has started (a stream),
      nothing can be answered any more, so the error goes on up;
    - every answer (413 and 500 included) is counted and logged by route template.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for
        # prometheus_client's `labels()` takes a lock and builds a key each call: keep the children.
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = declared = traceparent = prefer = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value.decode("latin-1")
            elif name == b"content-length":
                declared = value
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"prefer":
                prefer = value
        request_id = offered if offered and _REQUEST_ID.match(offered) else uuid.uuid4().hex
        request_id_var.set(request_id)
        job_id_var.set(None)  # set by admission: the access line names the job a submission created
        tenant_var.set(None)
        traceparent_var.set(valid_traceparent(traceparent))
        id_header = (b"x-request-id", request_id.encode())
        status_code: int | None = None  # until the response starts
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self._limited(scope, receive, send_with_id, declared)
        except Exception:
            if status_code is not None:  # a stream already answered: nothing else can be sent
                raise
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            detail = "an unexpected error occurred; it was logged (quote the request_id when reporting it)"
            await problem_response(500, None, detail, slug="internal")(scope, receive, send_with_id)
        finally:
            status_code = status_code or 500  # nothing was answered (the request was canceled)
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self._observe(template, method, status_code, elapsed, held_mode(template, prefer))
            # The path only: query strings can carry URL signatures.
            log_access(method, scope.get("path", ""), status_code, template, round(elapsed, 4))

    async def _limited(self, scope: Scope, receive: Receive, send: Send, declared: bytes | None) -> None:
        """The size limits, then the app."""
        method = scope.get("method", "GET")
        if method not in _NO_BODY:
            limit = self.limit_for(method, scope.get("path", ""))
            if declared is not None:
                try:
                    too_large = int(declared) > limit
                except ValueError:
                    response = problem_response(
                        400, None, "invalid Content-Length header", slug="bad-request"
                    )
                    await response(scope, receive, send)
                    return
                if too_large:
                    response = problem_response(
                        413, None, f"the request body is larger than {limit} bytes", slug="body-too-large"
                    )
                    await response(scope, receive, send)
                    return
            receive = _counting(receive, limit)
        await self.app(scope, receive, send)

    def _observe(
        self, template: str, method: str, status_code: int, elapsed: float, held: str | None
    ) -> None:
        counter = self._counters.get((template, method, status_code))
        if counter is None:
            counter = metrics.HTTP_REQUESTS.labels(route=template, method=method, status=str(status_code))
            self._counters[(template, method, status_code)] = counter
        counter.inc()
        if held is not None:  # waiting on a job is not latency: its own histogram
            metrics.HTTP_HELD_DURATION.labels(route=template, method=method, mode=held).observe(elapsed)
            return
        timer = self._timers.get((template, method))
        if timer is None:
            timer = self._timers[(template, method)] = metrics.HTTP_DURATION.labels(
                route=template, method=method
            )
        timer.observe(elapsed)


# Routes that answer only when a job is done, or stream until it is.
_HELD_ROUTES = {"/v1/images/generations": "wait", "/v1/jobs/{job_id}/events": "stream"}


def held_mode(template: str, prefer: bytes | None) -> str | None:
    """`wait` or `stream` for a request held open on purpose (`Prefer: wait` without `respond-async`, the
    synchronous OpenAI route, an event stream); None for an ordinary one."""
    mode = _HELD_ROUTES.get(template)
    if mode is not None:
        return mode
    if prefer is not None and b"wait" in prefer.lower() and b"respond-async" not in prefer.lower():
        return "wait"
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive` that raises BodyTooLarge once more than `limit` bytes of body have arrived."""
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counting_receive
