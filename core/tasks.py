"""The Celery application both sides share: the gateway sends tasks by name, the worker registers them.

This module imports no torch and nothing from ``worker/``: the gateway builds its app from here and only
ever calls ``send_task``. The reliability settings are the usual ones for Celery on Redis, where a
message is otherwise lost or run twice when a worker dies: late acks, reject on worker loss, prefetch 1, a
visibility timeout above the longest task, results that expire and are never stored for images.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from core.contract import JobKind
from core.settings import Settings

TASK_GENERATE = "fae.generate"
TASK_FINETUNE = "fae.finetune"
TASK_WEBHOOK = "fae.webhook"
TASK_EMBED = "fae.embed"

QUEUE_GENERATE = "generate"
QUEUE_FINETUNE = "finetune"
QUEUE_WEBHOOKS = "webhooks"
ALL_QUEUES = (QUEUE_GENERATE, QUEUE_FINETUNE, QUEUE_WEBHOOKS)

# Job kind → (task name, queue). The queue and task of a job are decided here and nowhere else.
TASK_FOR_KIND: dict[JobKind, tuple[str, str]] = {
    JobKind.generate: (TASK_GENERATE, QUEUE_GENERATE),
    JobKind.finetune: (TASK_FINETUNE, QUEUE_FINETUNE),
    # Embeddings run on the generate workers' engine (the same GPU path), answered synchronously.
    JobKind.embed: (TASK_EMBED, QUEUE_GENERATE),
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings from ours; every worker and the gateway use exactly these."""
    return {
        "broker_url": settings.redis.url,
        "result_backend": settings.redis.url,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in ALL_QUEUES],
        "task_default_queue": QUEUE_GENERATE,
        "task_routes": {
            TASK_GENERATE: {"queue": QUEUE_GENERATE},
            TASK_FINETUNE: {"queue": QUEUE_FINETUNE},
            TASK_EMBED: {"queue": QUEUE_GENERATE},
            TASK_WEBHOOK: {"queue": QUEUE_WEBHOOKS},
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Ack after the task ran, and put the message back if the worker process dies under it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One process per GPU holding up to `concurrency` jobs, each on its own thread blocked on the engine,
        # whose one device thread batches their steps together. Prefetch 1 per thread: a worker never holds more
        # jobs than it runs, so the queue, not one busy worker, keeps the backlog.
        "worker_pool": "threads",
        "worker_concurrency": settings.worker.concurrency,
        "worker_prefetch_multiplier": 1,
        # Redis redelivers unacked messages after this long: it must exceed the longest task, or a running
        # job runs twice. Dead workers are handled sooner by the lease reaper, not by this timeout.
        "broker_transport_options": {"visibility_timeout": settings.worker.visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": settings.worker.visibility_timeout_s},
        # Job state lives in the job store and images in object storage, never in Celery results.
        "task_ignore_result": True,
        "result_expires": settings.worker.result_expires_s,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "enable_utc": True,
    }


def make_celery(settings: Settings, name: str = "fae") -> Celery:
    """A configured Celery app; tasks are registered by ``worker.celery_app`` on the worker side only."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app
