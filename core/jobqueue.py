"""How jobs reach workers: the ``JobQueue`` interface the gateway uses, and its Celery implementation.

``CeleryJobQueue`` sends ``fae.generate`` / ``fae.finetune`` / ``fae.webhook`` by name over Redis; it is
also the worker's and reaper's sender (requeues, webhooks). Embedded mode's in-process implementation lives
on the worker side (``worker/embedded_queue.py``) and is injected by the composition root (``fae/``).

The gateway stores a job first, then calls ``enqueue``; when it makes a job terminal itself (canceling a
queued job) it calls ``notify_terminal`` so the job's webhook still fires. Tasks are sent with
``ignore_result``: the job store is the source of truth for results, so no publish subscribes to a result
channel (one ``LPUSH`` per job).
"""

from __future__ import annotations

import abc
import logging
from typing import Any

from core.contract import Job
from core.settings import Settings
from core.tasks import QUEUE_WEBHOOKS, TASK_FOR_KIND, TASK_WEBHOOK, make_celery

log = logging.getLogger(__name__)


class JobQueue(abc.ABC):
    @abc.abstractmethod
    def enqueue(self, job: Job) -> None:
        """Hand a stored, queued job to the workers (its task, on its kind's queue)."""

    @abc.abstractmethod
    def notify_terminal(self, job: Job) -> None:
        """Schedule the webhook of a job that became terminal (no-op without ``webhook_url``)."""

    @abc.abstractmethod
    def depth(self, queue_name: str) -> int:
        """Messages waiting in a queue (generate, finetune, webhooks)."""

    @abc.abstractmethod
    def ping(self) -> bool: ...

    @property
    def ready(self) -> bool:
        """Whether jobs will run now (embedded: the model is loaded and warm)."""
        return self.ping()

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (embedded mode); called from the app's lifespan."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop background work."""


class CeleryJobQueue(JobQueue):
    """Sends ``fae.generate`` / ``fae.finetune`` / ``fae.webhook`` by name; the broker is ``redis_url``."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.settings = settings
        self.app = make_celery(settings, name="fae-gateway")
        self._redis = redis.Redis.from_url(settings.redis.url, socket_timeout=5, socket_connect_timeout=5)

    def enqueue(self, job: Job) -> None:
        task, queue_name = TASK_FOR_KIND[job.kind]
        self.app.send_task(task, args=[job.id], queue=queue_name, routing_key=queue_name, ignore_result=True)

    def notify_terminal(self, job: Job) -> None:
        if job.webhook_url:
            send_webhook_task(self.app, job.id, attempt=1)

    def depth(self, queue_name: str) -> int:
        return int(self._redis.llen(queue_name))

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def stop(self) -> None:
        self._redis.close()


def send_webhook_task(app: Any, job_id: str, attempt: int, countdown_s: float = 0.0) -> None:
    """Queue one delivery attempt of a job's webhook on the CPU-side ``webhooks`` queue."""
    options: dict[str, Any] = {"countdown": countdown_s} if countdown_s > 0 else {}
    app.send_task(
        TASK_WEBHOOK,
        args=[job_id, attempt],
        queue=QUEUE_WEBHOOKS,
        routing_key=QUEUE_WEBHOOKS,
        ignore_result=True,
        **options,
    )
