"""The delivery lifecycle every job kind shares, and the helpers its handlers use.

Delivery is at least once, so this code is idempotent: a delivery of a job that is unknown, terminal, or
running under another worker's live lease is dropped with a log line; each start counts a delivery, and one
past ``max_deliveries`` dead-letters the job; a heartbeat renews the lease while the kind's handler runs;
outputs go to deterministic keys; and the job store refuses transitions that would move a job backwards.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from core import metrics
from core.contract import Job, JobError, JobKind, JobStatus, Progress
from core.jobstore import InvalidTransition, JobStore
from core.lifecycle import cancel_past_start_deadline, dead_letter, record_terminal, start_deadline_passed
from core.logs import bind
from core.settings import Settings
from core.storage import Storage, StorageUnavailable
from core.tasks import TASK_FOR_KIND
from core.webhooks import PROGRESS, STARTED, subscribed
from model.errors import GenerationCanceled, InvalidInputError
from worker.engine import Engine
from worker.leases import Heartbeat
from worker.model_versions import running_model_fields
from worker.scratch import scratch_root

log = logging.getLogger(__name__)

TerminalCallback = Callable[[Job], None]
EventCallback = Callable[[Job, str], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class JobContext:
    """What running a job needs, built once per worker (Celery process or embedded runner)."""

    store: JobStore
    storage: Storage
    engine: Engine
    settings: Settings
    worker_id: str
    on_terminal: TerminalCallback | None = None  # gets every job a delivery made terminal (webhooks)
    on_event: EventCallback | None = None  # `job.started` / `job.progress` webhooks (JobQueue.notify_event)


# A kind's handler: (running job, context, stop check, stage seconds to fill) -> the succeeded job's new fields.
JobHandler = Callable[[Job, JobContext, StopCheck, dict[str, float]], dict[str, Any]]


class JobFailure(Exception):
    """A failure with a machine-readable reason and a message the caller can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class LeaseLost(Exception):
    """Another worker owns the job now (this one was presumed dead): stop without touching its state."""


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def deliver(job_id: str, ctx: JobContext, handlers: Mapping[JobKind, JobHandler]) -> Job | None:
    """Run one delivery of a job with its kind's handler; the job if this delivery made it terminal, else None
    (dropped duplicate, lease lost, unknown job)."""
    job = ctx.store.get(job_id)
    if job is None:
        log.warning(
            "delivery dropped: the job does not exist (expired or never stored)", extra={"job_id": job_id}
        )
        return None
    if start_deadline_passed(job):  # before anything that could send it on: it never starts late
        with bind(job_id=job.id, tenant=job.tenant, request_id=job.request_id):
            final = cancel_past_start_deadline(ctx.store, job)
        if final is not None and ctx.on_terminal is not None:
            ctx.on_terminal(final)
        return final
    if not job.status.terminal and not ctx.storage.ping():
        # Nothing is counted or leased yet: the task is sent again with backoff (celery_app), so an outage
        # holds jobs queued instead of draining the queue into failures.
        raise StorageUnavailable("object storage is unavailable: the job stays queued until it is back")
    # A job pinned to a model version this worker lacks is sent on, uncounted (worker/model_versions.py).
    ran_on = {} if job.status.terminal else running_model_fields(job, ctx.engine)
    # Every line logged for the job carries the request id of the submission that created it.
    with bind(job_id=job.id, tenant=job.tenant, request_id=job.request_id):
        final = _deliver(job, ctx, handlers[job.kind], ran_on)
    if final is not None and final.status.terminal and ctx.on_terminal is not None:
        ctx.on_terminal(final)
    return final


def _deliver(
    job: Job, ctx: JobContext, handler: JobHandler, ran_on: dict[str, Any] | None = None
) -> Job | None:
    """Take the lease, count the delivery, run (recording the model version in `ran_on`); the job if this
    delivery made it terminal."""
    store, worker = ctx.store, ctx.settings.worker
    context = {"worker_id": ctx.worker_id}
    if job.status.terminal:
        log.info("delivery dropped: the job is already %s", job.status.value, extra=context)
        return None
    if not store.acquire_lease(job.id, ctx.worker_id, worker.lease_s):
        log.warning("duplicate delivery dropped: another worker holds a live lease", extra=context)
        return None
    try:
        deliveries = store.record_delivery(job.id)
        if deliveries > worker.max_deliveries:
            return dead_letter(store, job, deliveries, worker.max_deliveries)
        running = _mark_running(store, job, deliveries, ctx.worker_id, ran_on or {})
        if running is None:
            log.info("delivery dropped: the job finished or was canceled meanwhile", extra=context)
            return None
        log.info(
            "job started",
            extra={**context, "delivery": deliveries, "kind": job.kind.value, "traceparent": job.traceparent},
        )
        if ctx.on_event is not None and subscribed(running, STARTED):
            _send_event(ctx.on_event, running, STARTED)
        queue = TASK_FOR_KIND[job.kind][1]
        running_gauge = metrics.JOBS_RUNNING.labels(queue=queue)
        with running_gauge.track_inprogress(), Heartbeat(store, job.id, ctx.worker_id, worker) as heartbeat:
            return _run(running, ctx, handler, heartbeat)
    finally:
        store.release_lease(job.id, ctx.worker_id)


def _send_event(on_event: EventCallback, job: Job, event: str) -> None:
    """A webhook event is scheduled, never allowed to fail the job: a broker blip here would otherwise leave
    the job `running` with its lease released, where no reaper looks."""
    try:
        on_event(job, event)
    except Exception:
        log.warning("webhook event not scheduled", extra={"event": event}, exc_info=True)


def _mark_running(
    store: JobStore, job: Job, deliveries: int, worker_id: str, ran_on: dict[str, Any]
) -> Job | None:
    # `attempts` mirrors the delivery counter: the reaper's dead-letter decision reads it.
    current = store.get(job.id)
    if current is None or current.status.terminal:
        return None
    if current.status is JobStatus.running:
        # Its previous worker died and its lease ran out before the reaper requeued it; the lease is ours now.
        return store.update(job.id, attempts=deliveries, worker_id=worker_id, progress=Progress(), **ran_on)
    try:
        return store.transition(job.id, JobStatus.running, attempts=deliveries, worker_id=worker_id, **ran_on)
    except InvalidTransition:
        return None


def _run(job: Job, ctx: JobContext, handler: JobHandler, heartbeat: Heartbeat) -> Job | None:
    """Run the kind's handler and write the terminal state; None when the lease was lost (not ours to write)."""
    store, lease_s, context = ctx.store, ctx.settings.worker.lease_s, {"worker_id": ctx.worker_id}
    queued_s = max(((job.started_at or job.created_at) - job.created_at).total_seconds(), 0.0)
    metrics.JOB_DURATION.labels(kind=job.kind.value, stage="queued").observe(queued_s)
    timings = {"queued": round(queued_s, 4)}

    def should_stop() -> bool:
        return heartbeat.lost.is_set() or store.cancel_requested(job.id)

    try:
        fields = handler(job, ctx, should_stop, timings)
        renewed = not heartbeat.lost.is_set() and store.renew_lease(job.id, ctx.worker_id, lease_s)
        if not renewed:
            raise LeaseLost(job.id)  # presumed dead and replaced: the job is another worker's to finish
        return _finish(store, job, JobStatus.succeeded, context, timings, **fields)
    except (LeaseLost, GenerationCanceled) as exc:
        if isinstance(exc, LeaseLost) or heartbeat.lost.is_set():
            log.error("lease lost: leaving the job to the worker that has it now", extra=context)
            return None
        error = JobError(reason="canceled", message="canceled at the caller's request")
    except JobFailure as exc:
        error = JobError(reason=exc.reason, message=without_worker_paths(exc.message, ctx.settings))
    except (InvalidInputError, ValidationError) as exc:
        error = JobError(reason="invalid_input", message=_short(without_worker_paths(str(exc), ctx.settings)))
    except StorageUnavailable:
        log.exception("job failed: object storage stayed unavailable", extra=context)
        message = "object storage was unavailable for too long; submitting the job again may succeed"
        error = JobError(reason="storage_unavailable", message=message)
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
    record_terminal(final)
    metrics.JOB_DURATION.labels(kind=job.kind.value, stage="total").observe(total_s)
    reason = final.error.reason if final.error else None
    log.info("job %s", status.value, extra={**context, "reason": reason})
    return final


def without_worker_paths(message: str, settings: Settings) -> str:
    """A message for the caller with the worker's file paths taken out: a fine-tune's dataset folder reads
    "the dataset", any other path under the worker's scratch folder "a worker file"."""
    root = scratch_root(settings)
    for form in {str(root), str(root.resolve())}:
        anchor = re.escape(form.rstrip("/"))
        message = re.sub(
            anchor + r"/finetunes/[^/\s]+/(?:work/)?dataset(?:/[^\s'\":;,()]*)?", "the dataset", message
        )
        message = re.sub(anchor + r"(?:/[^\s'\":;,()]*)?", "a worker file", message)
    return message


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
    """Writes step/total/eta (and loss) to the job store at most every ``interval_s``, and the last step.

    It is a ``ProgressCallback`` for generation and takes the trainer's keyword calls (with ``loss``) as is.
    ``on_written`` gets the job after each write (``progress_webhook``).
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        interval_s: float,
        on_written: Callable[[Job], None] | None = None,
    ) -> None:
        self._store, self._job_id, self._interval_s = store, job_id, interval_s
        self._on_written = on_written
        self._last_at = float("-inf")

    def __call__(self, step: int, total: int, eta_s: float | None, loss: float | None = None) -> None:
        now = time.monotonic()
        if step < total and now - self._last_at < self._interval_s:
            return
        self._last_at = now
        try:
            job = self._store.set_progress(self._job_id, step, total, eta_s=eta_s, loss=loss)
            if self._on_written is not None:
                self._on_written(job)
        except Exception:
            log.warning("progress write failed", extra={"job_id": self._job_id}, exc_info=True)


def progress_webhook(job: Job, ctx: JobContext) -> Callable[[Job], None] | None:
    """Sends `job.progress` webhooks of a job that asked for them, at most every
    `FAE_WEBHOOK_PROGRESS_INTERVAL_S` (the last step is left to the terminal event)."""
    on_event = ctx.on_event
    if on_event is None or not subscribed(job, PROGRESS):
        return None
    interval_s, last_at = ctx.settings.webhooks.progress_interval_s, float("-inf")

    def send(current: Job) -> None:
        nonlocal last_at
        now = time.monotonic()
        if now - last_at >= interval_s and current.progress.step < current.progress.total:
            last_at = now
            on_event(current, PROGRESS)

    return send
