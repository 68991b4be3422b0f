"""The gateway: `create_app` wires settings, job store, storage, queue and routes into a FastAPI app.

Production: `fae serve` or `uvicorn --factory service.app:create_app` (Redis job store, S3 or local storage,
Celery queue). Embedded mode (`fae serve --embedded`) passes its own memory store, local storage and
in-process queue from the composition root (`fae/embedded.py`); tests pass fakes the same way. This module,
and everything it imports, never imports torch, `model/` or `worker/`.

Handlers that call the job store or storage, which block, are plain `def`: FastAPI runs them in its thread
pool. A handler is `async` only when it must await something (the request body stream, `Prefer: wait`); it
then calls every blocking function through `run_in_threadpool`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core import metrics
from core.contract import MAX_EMBED_IMAGES
from core.heap import freeze_startup_objects
from core.jobqueue import CeleryJobQueue, JobQueue
from core.jobstore import JobStore, make_job_store
from core.logs import configure_logging, register_secret
from core.settings import GatewaySettings, Settings, get_settings
from core.storage import Storage, make_storage
from service.auth import ApiKeyRegistry
from service.catalog import ModelCatalog
from service.datasets import UploadSlots
from service.deps import Services
from service.edges import GatewayRoute
from service.middleware import GatewayMiddleware
from service.openapi import install_openapi, operation_id
from service.problems import install_problem_handlers
from service.routes import (
    adapters,
    admin,
    embeddings,
    files,
    finetunes,
    generate,
    generate_upload,
    health,
    images,
    jobs,
    models,
    provenance,
    webhook_secret,
)

logger = logging.getLogger(__name__)

API_DESCRIPTION = """Image generation and fine-tuning with FAE models.

Authenticate with `Authorization: Bearer <API key>`. Errors are RFC 9457 problem details
(`application/problem+json`). `POST /v1/generate` answers 202 with a job to poll (or follow at
`/v1/jobs/{id}/events`), or 200 with the finished job when `Prefer: wait=N` suffices."""


# The documentation's sections, in reading order (Swagger UI and ReDoc follow this list, not the routes').
API_TAGS = [
    {
        "name": "generate",
        "description": "Generate images (text or class prompts; optionally from an input image).",
    },
    {"name": "openai", "description": "OpenAI-compatible image generation (`base_url` of the `openai` SDK)."},
    {"name": "jobs", "description": "Follow, cancel and delete generation jobs."},
    {"name": "embeddings", "description": "FAE latents and encoder features of images."},
    {"name": "finetunes", "description": "Brand fine-tunes: a few dozen images in, an adapter out."},
    {"name": "models", "description": "The models on offer and the tenant's adapters."},
    {"name": "provenance", "description": "Content Credentials and watermark verification."},
    {"name": "webhooks", "description": "The tenant's webhook signing secret."},
    {"name": "files", "description": "Outputs stored by local storage (S3 deployments link presigned URLs)."},
    {"name": "admin", "description": "Operators: jobs that kept killing their worker, and their replay."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


def _body_limits(gateway: GatewaySettings) -> Callable[[str, str], int]:
    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/finetunes":
            return gateway.max_upload_bytes
        if method == "POST" and path.rstrip("/") == "/v1/provenance/verify":
            return gateway.max_dataset_file_bytes + 64 * 1024  # one image and its multipart framing
        if method == "POST" and path.rstrip("/") == "/v1/generate":
            # an input image (a file part, or a data URI: base64 is 4/3 of it) and the other fields
            return gateway.max_dataset_file_bytes * 4 // 3 + 64 * 1024
        if method == "POST" and path.rstrip("/") == "/v1/embeddings":
            return MAX_EMBED_IMAGES * (gateway.max_dataset_file_bytes * 4 // 3) + 64 * 1024
        return gateway.max_body_bytes

    return limit_for


def create_app(
    settings: Settings | None = None,
    job_store: JobStore | None = None,
    storage: Storage | None = None,
    job_queue: JobQueue | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.process)
    # Every request is logged once, by GatewayMiddleware (`fae.access`, with its route and tenant);
    # uvicorn's own access log stays off even where uvicorn configured logging before this app was built.
    logging.getLogger("uvicorn.access").disabled = True
    for secret in (settings.webhooks.signing_key, settings.storage.s3_secret_access_key):
        if secret:
            register_secret(secret)
    keys = ApiKeyRegistry.from_settings(settings.gateway)
    if not len(keys):
        logger.warning(
            "no API keys are configured (FAE_API_KEYS / FAE_API_KEYS_FILE): every request gets 401"
        )
    owns_store = job_store is None  # close only what this app opened
    store = job_store or make_job_store(settings)
    storage = storage or make_storage(settings)
    queue = job_queue or CeleryJobQueue(settings)
    uploads = UploadSlots(settings.gateway.max_concurrent_uploads)
    services = Services(settings, store, storage, queue, keys, ModelCatalog(settings), uploads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        logger.info("gateway started", extra={"models": [m.name for m in services.models.all()]})
        if settings.process.gc_freeze:
            freeze_startup_objects("gateway started")
        try:
            yield
        finally:
            await queue.aclose()
            queue.stop()
            if owns_store:
                await store.aclose()
                store.close()
            metrics.mark_process_dead()  # one of several gateway processes: its live gauges go with it

    app = FastAPI(
        title="fae-serve",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,  # short, stable operation ids (service/openapi.py)
        openapi_tags=API_TAGS,
        docs_url=None,  # served from local files by install_openapi (no CDN)
        redoc_url=None,
    )
    app.state.services = services
    app.router.route_class = GatewayRoute  # the routes added on the app itself (the docs pages)
    install_problem_handlers(app)
    install_openapi(app)
    # Routers are matched in this order, one after another: job polling, the most frequent request by far,
    # first. The documentation keeps its own order (`API_TAGS`).
    for module in (
        jobs,
        generate_upload,  # multipart only; before the JSON route at the same path
        generate,
        embeddings,
        images,
        finetunes,
        models,
        adapters,
        webhook_secret,
        provenance,
        admin,
        files,
        health,
    ):
        app.include_router(module.router)
    app.add_middleware(GatewayMiddleware, limit_for=_body_limits(settings.gateway))
    return app
