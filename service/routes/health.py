"""Probes and metrics: `/healthz` (alive), `/readyz` (dependencies reachable), `/metrics` (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from core import metrics
from core.contract import JobKind
from service.deps import ServicesDep
from service.problems import problem_response

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _safe(check: object) -> bool:
    try:
        return bool(check())  # type: ignore[operator]
    except Exception:
        return False


@router.get("/readyz", summary="Readiness: job store, storage and queue reachable (embedded: model warm)")
def readyz(services: ServicesDep) -> JSONResponse:
    queue = services.queue
    checks = {
        "job_store": _safe(services.store.ping),
        "storage": _safe(services.storage.ping),
        "queue": _safe(lambda: queue.ready),
    }
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return problem_response(503, "Not Ready", f"not ready: {failing}", "not-ready", checks=checks)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics_endpoint(services: ServicesDep) -> Response:
    try:  # queue depths and the dead-letter count are sampled at scrape time from the job store
        for kind in JobKind:
            metrics.QUEUE_DEPTH.labels(queue=kind.value).set(services.store.queue_depth(kind))
        metrics.QUEUE_DEPTH.labels(queue="webhooks").set(services.queue.depth("webhooks"))
        metrics.DEAD_LETTERS.set(services.store.count_dead_letters())
    except Exception:
        logger.warning("queue depth or dead letters unavailable for /metrics", exc_info=True)
    body, content_type = metrics.render_latest()
    return Response(body, media_type=content_type)
