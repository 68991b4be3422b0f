"""A process that answers `/healthz` within a second while its app is still being built.

Embedded mode's app imports the model stack (seconds) before it exists; `StartingApp` is served at once instead,
builds the app in a thread and then hands it every request. It imports only Starlette, so the port is open as
soon as uvicorn is: its two answers are written here rather than through `service.problems`, whose imports alone
take longer than the second a supervisor allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

STARTING_RETRY_S = 2
PROBLEM_MEDIA_TYPE = "application/problem+json"


class StartingApp:
    """`/healthz` answers while `build` runs in a thread; other requests get a 503 problem with Retry-After.
    Then every request goes to the built app, whose lifespan this one runs. A failed build is logged and makes
    `/healthz` a 500, so a supervisor restarts the process."""

    def __init__(self, build: Callable[[], Starlette]) -> None:
        self._build = build
        self._app: ASGIApp | None = None
        self._failed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self._app is not None:
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            await self._interim(scope["path"])(scope, receive, send)

    def _interim(self, path: str) -> JSONResponse:
        if path == "/healthz" and not self._failed:
            return JSONResponse({"status": "starting"})
        status, slug = (500, "internal") if self._failed else (503, "starting")
        detail = "the service failed to start (see its log)" if self._failed else "starting; retry shortly"
        body = {"type": f"urn:fae-serve:problem:{slug}", "title": "Service Unavailable", "status": status}
        headers = None if self._failed else {"Retry-After": str(STARTING_RETRY_S)}
        if self._failed:
            body["title"] = "Internal Server Error"
        return JSONResponse({**body, "detail": detail}, status, headers, media_type=PROBLEM_MEDIA_TYPE)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with contextlib.AsyncExitStack() as stack:
            starting = asyncio.create_task(self._start(stack))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await asyncio.wait({starting})  # a build in its thread cannot be interrupted
        await send({"type": "lifespan.shutdown.complete"})

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        try:
            app = await asyncio.to_thread(self._build)
            await stack.enter_async_context(app.router.lifespan_context(app))
        except Exception:
            logger.exception("the app failed to start")
            self._failed = True
            return
        self._app = app
