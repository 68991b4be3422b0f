"""The one job-execution path: the Celery task and the embedded in-process runner both call ``execute_job``.

Delivery is at least once, so this code is idempotent: a delivery of a job that is unknown, terminal, or
running under another worker's live lease is dropped with a log line; each start counts a delivery, and one
past ``max_deliveries`` dead-letters the job; outputs go to deterministic keys; and the job store refuses
transitions that would move a job backwards.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from core import metrics
from core.contract import GenerateRequest, Job, JobError, JobKind, JobStatus, Progress
from core.jobstore import InvalidTransition, JobStore
from core.logs import bind
from core.settings import Settings
from core.storage import Storage
from model.errors import GenerationCanceled, InvalidInputError
from worker.engine import AdapterSpec, Engine, GenerationRequest
from worker.leases import Heartbeat
from worker.outputs import upload_images
from worker.scratch import fetch_prefix

log = logging.getLogger("fae.worker.execute")

TerminalCallback = Callable[[Job], None]


class JobFailure(Exception):
    """A failure with a machine-readable reason and a message the caller can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class LeaseLost(Exception):
    """Another worker owns the job now (this one was presumed dead): stop without touching its state."""


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def execute_job(
    job_id: str,
    store: JobStore,
    storage: Storage,
    engine: Engine,
    settings: Settings,
    *,
    worker_id: str | None = None,
    on_terminal: TerminalCallback | None = None,
) -> Job | None:
    """Run one delivery of a job; returns the job if this delivery made it terminal, else None (dropped
    duplicate, lease lost, unknown job). ``on_terminal`` gets that terminal job (webhooks hang off it)."""
    worker_id = worker_id or make_worker_id()
    job = store.get(job_id)
    if job is None:
        log.warning(
            "delivery dropped: the job does not exist (expired or never stored)", extra={"job_id": job_id}
        )
        return None
    with bind(job_id=job.id, tenant=job.tenant):
        final = _deliver(job, store, storage, engine, settings, worker_id)
    if final is not None and final.status.terminal and on_terminal is not None:
        on_terminal(final)
    return final


def _deliver(
    job: Job, store: JobStore, storage: Storage, engine: Engine, settings: Settings, worker_id: str
) -> Job | None:
    """Take the lease, count the delivery, run; the job if this delivery made it terminal."""
    context = {"worker_id": worker_id}
    if job.status.terminal:
        log.info("delivery dropped: the job is already %s", job.status.value, extra=context)
        return None
    if not store.acquire_lease(job.id, worker_id, settings.worker.lease_s):
        log.warning("duplicate delivery dropped: another worker holds a live lease", extra=context)
        return None
    try:
        deliveries = store.record_delivery(job.id)
        if deliveries > settings.worker.max_deliveries:
            return _dead_letter(store, job, deliveries, settings)
        running = _mark_running(store, job, deliveries, worker_id)
        if running is None:
            log.info("delivery dropped: the job finished or was canceled meanwhile", extra=context)
            return None
        log.info("job started", extra={**context, "delivery": deliveries, "kind": job.kind.value})
        with Heartbeat(store, job.id, worker_id, settings) as heartbeat:
            return _run(running, store, storage, engine, settings, worker_id, heartbeat)
    finally:
        store.release_lease(job.id, worker_id)


def _mark_running(store: JobStore, job: Job, deliveries: int, worker_id: str) -> Job | None:
    # `attempts` mirrors the delivery counter: the reaper's dead-letter decision reads it.
    current = store.get(job.id)
    if current is None or current.status.terminal:
        return None
    if current.status is JobStatus.running:
        # Its previous worker died and its lease ran out before the reaper requeued it; the lease is ours now.
        return store.update(job.id, attempts=deliveries, worker_id=worker_id, progress=Progress())
    try:
        return store.transition(job.id, JobStatus.running, attempts=deliveries, worker_id=worker_id)
    except InvalidTransition:
        return None


def _dead_letter(store: JobStore, job: Job, deliveries: int, settings: Settings) -> Job | None:
    reason = (
        f"the job was delivered {deliveries} times without finishing (limit {settings.worker.max_deliveries}); it "
        "was moved to the dead-letter list. Check the request, then replay it from the admin API"
    )
    store.dead_letter(job.id, reason)
    metrics.JOB_FAILURES.labels(kind=job.kind.value, reason="dead_lettered").inc()
    metrics.JOBS_TOTAL.labels(kind=job.kind.value, status=JobStatus.failed.value).inc()
    log.error("job dead-lettered", extra={"deliveries": deliveries})
    return store.get(job.id)


def _run(
    job: Job,
    store: JobStore,
    storage: Storage,
    engine: Engine,
    settings: Settings,
    worker_id: str,
    heartbeat: Heartbeat,
) -> Job | None:
    """Run the job's kind and write its terminal state; None when the lease was lost (not ours to write)."""
    context = {"worker_id": worker_id}
    queued_s = max(((job.started_at or job.created_at) - job.created_at).total_seconds(), 0.0)
    metrics.JOB_DURATION.labels(kind=job.kind.value, stage="queued").observe(queued_s)
    timings = {"queued": round(queued_s, 4)}

    def should_stop() -> bool:
        return heartbeat.lost.is_set() or store.cancel_requested(job.id)

    try:
        if job.kind is JobKind.generate:
            fields = run_generate(job, store, storage, engine, settings, should_stop, timings)
        else:
            from worker.finetune import run_finetune_job  # only finetune workers need it

            fields = run_finetune_job(job, store, storage, engine, settings, should_stop)
        if heartbeat.lost.is_set() or not store.renew_lease(job.id, worker_id, settings.worker.lease_s):
            raise LeaseLost(job.id)  # presumed dead and replaced: the job is another worker's to finish
        return _finish(store, job, JobStatus.succeeded, context, timings, **fields)
    except (LeaseLost, GenerationCanceled) as exc:
        if isinstance(exc, LeaseLost) or heartbeat.lost.is_set():
            log.error("lease lost: leaving the job to the worker that has it now", extra=context)
            return None
        error = JobError(reason="canceled", message="canceled at the caller's request")
    except JobFailure as exc:
        error = JobError(reason=exc.reason, message=exc.message)
    except (InvalidInputError, ValidationError) as exc:
        error = JobError(reason="invalid_input", message=_short(str(exc)))
    except Exception as exc:
        log.exception("job failed with an internal error", extra=context)
        message = (
            f"the worker hit an internal error ({type(exc).__name__}); submitting the job again may succeed, "
            f"otherwise report job id {job.id} to the operator"
        )
        error = JobError(reason="internal", message=message)
    status = JobStatus.canceled if error.reason == "canceled" else JobStatus.failed
    return _finish(store, job, status, context, timings, error=error)


def _finish(
    store: JobStore,
    job: Job,
    status: JobStatus,
    context: dict[str, Any],
    timings: dict[str, float],
    **fields: Any,
) -> Job | None:
    total_s = max((datetime.now(UTC) - job.created_at).total_seconds(), 0.0)
    try:
        final = store.transition(job.id, status, timings={**timings, "total": round(total_s, 4)}, **fields)
    except InvalidTransition as exc:
        log.warning("final state not written: %s", exc, extra=context)
        return None
    kind = job.kind.value
    metrics.JOBS_TOTAL.labels(kind=kind, status=status.value).inc()
    metrics.JOB_DURATION.labels(kind=kind, stage="total").observe(total_s)
    reason = final.error.reason if final.error else None
    if reason is not None:
        metrics.JOB_FAILURES.labels(kind=kind, reason=reason).inc()
    log.info("job %s", status.value, extra={**context, "reason": reason})
    return final


def _short(message: str, limit: int = 1000) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


class Throttled:
    """Calls ``fn`` at most every ``interval_s``, answering the last result in between (cancel polling)."""

    def __init__(self, fn: Callable[[], bool], interval_s: float) -> None:
        self._fn, self._interval_s = fn, interval_s
        self._last_at = float("-inf")
        self._last = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last_at >= self._interval_s:
            self._last_at = now
            try:
                self._last = bool(self._fn())
            except Exception:  # a Redis blip must not kill the job; the next poll tries again
                log.warning("cancel check failed", exc_info=True)
        return self._last


class ProgressWriter:
    """Writes step/total/eta (and loss) to the job store at most every ``interval_s``, and the last step."""

    def __init__(self, store: JobStore, job_id: str, interval_s: float) -> None:
        self._store, self._job_id, self._interval_s = store, job_id, interval_s
        self._last_at = float("-inf")

    def __call__(self, step: int, total: int, eta_s: float | None, loss: float | None = None) -> None:
        now = time.monotonic()
        if step < total and now - self._last_at < self._interval_s:
            return
        self._last_at = now
        try:
            self._store.set_progress(self._job_id, step, total, eta_s=eta_s, loss=loss)
        except Exception:
            log.warning("progress write failed", extra={"job_id": self._job_id}, exc_info=True)


def run_generate(
    job: Job,
    store: JobStore,
    storage: Storage,
    engine: Engine,
    settings: Settings,
    should_stop: Callable[[], bool],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Generate, encode and upload a job's images (stage seconds into ``timings``); the job's new fields."""
    request = GenerateRequest.model_validate(job.request)
    adapter = resolve_adapter(job, request, store, storage, settings)
    generation = GenerationRequest.from_api(request, adapter)
    if job.model:  # the gateway resolved the model name when it accepted the job
        generation = dataclasses.replace(generation, model=job.model)
    result = engine.run(
        generation,
        on_progress=ProgressWriter(store, job.id, settings.worker.progress_interval_s),
        should_cancel=Throttled(should_stop, settings.worker.cancel_poll_s),
    )
    started = time.perf_counter()
    outputs = upload_images(storage, job.tenant, job.id, result.images, result.seeds, request.output_format)
    stages = {"denoise": result.denoise_s, "decode": result.decode_s, "upload": time.perf_counter() - started}
    for stage, seconds in stages.items():
        metrics.JOB_DURATION.labels(kind=job.kind.value, stage=stage).observe(seconds)
        timings[stage] = round(seconds, 4)
    metrics.IMAGES_GENERATED.labels(model=result.model).inc(len(outputs))
    engine.record_memory()
    return {"outputs": outputs, "seeds": result.seeds, "model": result.model}


def resolve_adapter(
    job: Job, request: GenerateRequest, store: JobStore, storage: Storage, settings: Settings
) -> AdapterSpec | None:
    """The job's adapter, downloaded once into the worker's scratch directory."""
    if request.adapter is None:
        return None
    record = store.get_adapter(job.tenant, request.adapter)
    if record is None:
        raise InvalidInputError(f"adapter {request.adapter!r} does not exist (see GET /v1/adapters)")
    local_dir = fetch_prefix(storage, record["key"], settings, "adapters", job.tenant, request.adapter)
    return AdapterSpec(adapter_id=request.adapter, local_dir=local_dir, scale=request.adapter_scale)
