"""The gateway: `create_app` wires settings, job store, storage, queue and routes into a FastAPI app.

Production: `uvicorn --factory service.app:create_app` (Redis job store, S3 or local storage, Celery queue).
Embedded (`fae serve --embedded`): memory job store, local storage, in-process worker. Every part can be
injected (tests pass fakes). This module, and everything it imports, never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.auth import ApiKeyRegistry
from service.deps import Services
from service.jobstore import JobStore, make_job_store
from service.logging import configure_logging, register_secret
from service.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from service.models import ModelCatalog
from service.problems import install_problem_handlers
from service.queue import JobQueue, make_job_queue
from service.routes import admin, files, finetunes, generate, health, jobs, models, webhooks
from service.settings import Settings, get_settings
from service.storage import Storage, make_storage

logger = logging.getLogger(__name__)

API_DESCRIPTION = """Image generation and fine-tuning with FAE models.

Authenticate with `Authorization: Bearer <API key>`. Errors are RFC 9457 problem details
(`application/problem+json`). `POST /v1/generate` answers 202 with a job to poll (or follow at
`/v1/jobs/{id}/events`), or 200 with the finished job when `Prefer: wait=N` suffices."""


def _body_limits(settings: Settings):  # -> Callable[[str, str], int]
    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/finetunes":
            return settings.max_upload_bytes
        return settings.max_body_bytes

    return limit_for


def create_app(
    settings: Settings | None = None,
    embedded: bool | None = None,
    job_store: JobStore | None = None,
    storage: Storage | None = None,
    job_queue: JobQueue | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    embedded = settings.embedded if embedded is None else embedded
    configure_logging(settings)
    for secret in (settings.webhook_signing_key, settings.s3_secret_access_key):
        if secret:
            register_secret(secret)
    keys = ApiKeyRegistry.from_settings(settings)
    if not len(keys):
        logger.warning(
            "no API keys are configured (FAE_API_KEYS / FAE_API_KEYS_FILE): every request gets 401"
        )
    owns_store = job_store is None  # close only what this app opened
    store = job_store or make_job_store(settings, embedded)
    storage = storage or make_storage(settings, embedded=embedded)
    queue = job_queue or make_job_queue(settings, embedded, store=store, storage=storage)
    services = Services(settings, store, storage, queue, keys, ModelCatalog(settings), embedded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        logger.info(
            "gateway started", extra={"embedded": embedded, "models": [m.name for m in services.models.all()]}
        )
        try:
            yield
        finally:
            queue.stop()
            if owns_store:
                store.close()

    app = FastAPI(
        title="fae-serve",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.services = services
    install_problem_handlers(app)
    for module in (generate, jobs, finetunes, models, webhooks, admin, files, health):
        app.include_router(module.router)
    # Outermost last: the request context sees every response, including a 413 from the size limit.
    app.add_middleware(BodySizeLimitMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(RequestContextMiddleware)
    return app
