"""One webhook delivery attempt with the retry decision, shared by the Celery task and the embedded runner."""

from __future__ import annotations

import logging
from typing import Any

from core.jobstore import JobStore
from core.settings import Settings
from core.storage import Storage, presign_outputs
from core.webhooks import (
    PROGRESS,
    EmittedEvent,
    deliver,
    retry_delay_s,
    signing_secrets,
    subscribed,
    terminal_event,
)

log = logging.getLogger(__name__)


def attempt_delivery(
    job_id: str,
    attempt: int,
    store: JobStore,
    storage: Storage,
    settings: Settings,
    event: str | None = None,
    emitted: dict[str, Any] | None = None,
) -> float | None:
    """Deliver the job's `event` (default: its terminal status) once; seconds until the next attempt, or None
    when done (or given up, or not wanted: the job's `webhook_events` leave it out). Progress events are best
    effort: one attempt, none once the job finished (its terminal event follows). `emitted`: the start or
    progress event as `EmittedEvent.of` captured it when it was emitted (absent from older task messages)."""
    job = store.get(job_id)
    if job is None or not job.webhook_url:
        return None
    event = event or terminal_event(job)
    if not subscribed(job, event) or (event == PROGRESS and job.status.terminal):
        return None
    context = {
        "job_id": job.id,
        "tenant": job.tenant,
        "request_id": job.request_id,
        "attempt": attempt,
        "event": event,
    }
    job = presign_outputs(job, storage, settings.storage.presign_expiry_s)
    secrets = signing_secrets(job.tenant, store, settings.webhooks, settings.process.data_dir)
    captured = EmittedEvent.model_validate(emitted) if emitted is not None else None
    outcome = deliver(job, job.webhook_url, secrets, settings.webhooks, event, captured)
    if not outcome.retryable or event == PROGRESS:
        return None
    if attempt >= settings.webhooks.max_attempts:
        log.error("webhook given up after %d attempts", attempt, extra=context)
        return None
    delay_s = retry_delay_s(attempt, base_s=settings.webhooks.retry_base_s)
    log.info("webhook retry scheduled in %.1f s", delay_s, extra=context)
    return delay_s
