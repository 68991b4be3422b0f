"""The worker's Celery app: ``celery -A worker.celery_app worker --pool=threads -Q generate,webhooks``.

Tasks take a job id only; everything else is in the job store. Signals tie the process's life to a
``WorkerRuntime``: ``worker_init`` (before the consumer starts) loads and warms the model, ``worker_ready``
marks the worker ready, ``worker_shutdown`` stops its threads.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import signals

from core.jobqueue import send_webhook_task
from core.logs import bind, configure_logging
from core.settings import Settings, get_settings
from core.storage import StorageUnavailable
from core.tasks import TASK_EMBED, TASK_FINETUNE, TASK_GENERATE, TASK_WEBHOOK, celery_config, make_celery
from worker.jobs import execute_job
from worker.jobs.webhook import attempt_delivery
from worker.model_versions import ModelVersionUnavailable
from worker.runtime import WorkerRuntime

app = make_celery(get_settings(), name="fae-worker")
_settings: Settings | None = None
_runtime: WorkerRuntime | None = None


def configure(settings: Settings) -> None:
    """Use these settings instead of the environment's (``run_worker`` passes the CLI's)."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))


def runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the worker runtime is not booted (tasks run only inside a started worker)")
    return _runtime


# A job store or object storage outage before a job starts must not lose the message (the job would stay
# queued, holding its tenant's in-flight slot, until it expires): such a task is sent again with backoff for as
# long as the outage lasts; so is a job pinned to a model version this worker does not hold (worker/model_versions.py).
# Failures once the job runs are recorded on the job.
_STORE_OUTAGE = {
    "autoretry_for": (redis.ConnectionError, redis.TimeoutError, StorageUnavailable, ModelVersionUnavailable),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": None,
}


@app.task(name=TASK_GENERATE, ignore_result=True, **_STORE_OUTAGE)
def generate(job_id: str) -> None:
    execute_job(job_id, runtime().job_context())


@app.task(name=TASK_FINETUNE, ignore_result=True, **_STORE_OUTAGE)
def finetune(job_id: str) -> None:
    execute_job(job_id, runtime().job_context())


@app.task(name=TASK_EMBED, ignore_result=True, **_STORE_OUTAGE)
def embed(job_id: str) -> None:
    execute_job(job_id, runtime().job_context())


@app.task(name=TASK_WEBHOOK, ignore_result=True, **_STORE_OUTAGE)
def webhook(
    job_id: str, attempt: int = 1, event: str | None = None, emitted: dict[str, Any] | None = None
) -> None:
    """One delivery attempt; messages queued before `emitted` existed (two or three arguments) still deliver."""
    rt = runtime()
    assert rt.store is not None and rt.storage is not None
    with bind(job_id=job_id):
        retry_in = attempt_delivery(job_id, attempt, rt.store, rt.storage, rt.settings, event, emitted)
    if retry_in is not None:
        send_webhook_task(app, job_id, attempt + 1, countdown_s=retry_in, event=event, emitted=emitted)


@signals.worker_init.connect
def _boot(sender: Any = None, **_: Any) -> None:
    global _runtime
    settings = _settings or get_settings()
    configure_logging(settings.process)
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    _runtime = WorkerRuntime(settings, queues)
    _runtime.boot()


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    if _runtime is None:
        return
    # Pausing goes through Celery's remote control, so the consumer changes on its own event loop.
    destination = [sender.hostname] if sender is not None else None
    _runtime.mark_consuming(
        pause=lambda queue: app.control.cancel_consumer(queue, destination=destination, reply=False),
        resume=lambda queue: app.control.add_consumer(queue, destination=destination, reply=False),
    )


@signals.worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    if _runtime is not None:
        _runtime.shutdown()
