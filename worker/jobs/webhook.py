"""One webhook delivery attempt with the retry decision, shared by the Celery task and the embedded runner."""

from __future__ import annotations

import logging

from core.jobstore import JobStore
from core.settings import Settings
from core.storage import Storage, presign_outputs
from core.webhooks import deliver, retry_delay_s, secret_for_tenant

log = logging.getLogger(__name__)


def attempt_delivery(
    job_id: str, attempt: int, store: JobStore, storage: Storage, settings: Settings
) -> float | None:
    """Deliver the job's webhook once; seconds until the next attempt, or None when done (or given up)."""
    job = store.get(job_id)
    if job is None or not job.webhook_url:
        return None
    context = {"job_id": job.id, "tenant": job.tenant, "attempt": attempt}
    job = presign_outputs(job, storage, settings.storage.presign_expiry_s)
    secret = secret_for_tenant(job.tenant, settings.webhooks, settings.process.data_dir)
    outcome = deliver(job, job.webhook_url, secret, settings.webhooks)
    if not outcome.retryable:
        return None
    if attempt >= settings.webhooks.max_attempts:
        log.error("webhook given up after %d attempts", attempt, extra=context)
        return None
    delay_s = retry_delay_s(attempt, base_s=settings.webhooks.retry_base_s)
    log.info("webhook retry scheduled in %.1f s", delay_s, extra=context)
    return delay_s
