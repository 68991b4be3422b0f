"""Probes and metrics: `/healthz` (alive), `/readyz` (dependencies reachable), `/metrics` (Prometheus)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from core import metrics
from core.contract import JobKind
from service.deps import ServicesDep
from service.edges import GatewayRoute
from service.problems import problem_response

router = APIRouter(tags=["health"], route_class=GatewayRoute)
logger = logging.getLogger(__name__)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessChecks(BaseModel):
    job_store: bool = Field(description="The job store (Redis, or memory in embedded mode) answers.")
    storage: bool = Field(description="Object storage answers.")
    queue: bool = Field(description="The job queue can take jobs (embedded mode: the model is warm).")


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    checks: ReadinessChecks


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health()


def _safe(check: object) -> bool:
    try:
        return bool(check())  # type: ignore[operator]
    except Exception:
        return False


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: job store, storage and queue reachable (embedded: model warm)",
    description="503 (problem JSON with the same `checks`) while any of them is not.",
)
def readyz(services: ServicesDep) -> Readiness | JSONResponse:
    queue = services.queue
    checks = {
        "job_store": _safe(services.store.ping),
        "storage": _safe(services.storage.ping),
        "queue": _safe(lambda: queue.ready),
    }
    if all(checks.values()):
        return Readiness(checks=ReadinessChecks(**checks))
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
