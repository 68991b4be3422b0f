"""How the gateway hands jobs to workers: Celery over Redis, or a thread in this process (embedded mode).

Nothing here imports torch or ``worker/`` at import time: ``CeleryJobQueue`` sends tasks by name, and
``InProcessJobQueue`` imports the worker's execution code only when the embedded mode starts it (that mode
runs the model in the gateway process by design).

The gateway stores a job first, then calls ``enqueue``; when it makes a job terminal itself (canceling a
queued job) it calls ``notify_terminal`` so the job's webhook still fires.
"""

from __future__ import annotations

import abc
import collections
import heapq
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from service import metrics
from service.celery_app import TASK_FOR_KIND, TASK_WEBHOOK, make_celery
from service.contract import Job
from service.settings import Settings

if TYPE_CHECKING:
    from service.jobstore import JobStore
    from service.storage import Storage

log = logging.getLogger("fae.queue")


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
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)

    def enqueue(self, job: Job) -> None:
        task, queue_name = TASK_FOR_KIND[job.kind]
        self.app.send_task(task, args=[job.id], queue=queue_name, routing_key=queue_name)

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
    app.send_task(TASK_WEBHOOK, args=[job_id, attempt], queue="webhooks", routing_key="webhooks", **options)


class InProcessJobQueue(JobQueue):
    """Embedded mode: one thread runs jobs through the same ``execute_job`` as the Celery task, one more
    delivers webhooks with the same retry policy. The model loads in the background at ``start``."""

    def __init__(self, settings: Settings, store: JobStore, storage: Storage) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._waiting: collections.Counter[str] = collections.Counter()
        self._webhooks: list[tuple[float, int, str]] = []  # heap of (due, attempt, job id)
        self._webhook_wakeup = threading.Condition()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.engine: Any = None
        self.error: str | None = None  # why the model could not load, for /readyz

    # --- JobQueue ------------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        queue_name = TASK_FOR_KIND[job.kind][1]
        with self._lock:
            self._waiting[queue_name] += 1
        self._jobs.put((job.id, queue_name))

    def notify_terminal(self, job: Job) -> None:
        if job.webhook_url:
            self.schedule_webhook(job.id, attempt=1, delay_s=0.0)

    def depth(self, queue_name: str) -> int:
        with self._lock:
            if queue_name == "webhooks":
                return len(self._webhooks)
            return self._waiting[queue_name]

    def ping(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    @property
    def ready(self) -> bool:
        return self.ping() and self.engine is not None and self.engine.ready

    def start(self) -> None:
        if self._threads:
            return
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._run_jobs, name="fae-inprocess-worker", daemon=True),
            threading.Thread(target=self._run_webhooks, name="fae-inprocess-webhooks", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        self._jobs.put(None)
        with self._webhook_wakeup:
            self._webhook_wakeup.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        metrics.WORKER_READY.set(0)
        if self.engine is not None:
            self.engine.close()

    # --- the job thread -------------------------------------------------------------------------------
    def _run_jobs(self) -> None:
        from worker.engine import Engine
        from worker.execute import execute_job, make_worker_id

        try:
            self.engine = Engine.load_and_warm(self.settings)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("embedded worker could not load its model; jobs stay queued")
            return
        metrics.WORKER_READY.set(1)
        worker_id = make_worker_id()
        while not self._stopping.is_set():
            item = self._jobs.get()
            if item is None:
                return
            job_id, queue_name = item
            with self._lock:
                self._waiting[queue_name] -= 1
            try:
                execute_job(
                    job_id,
                    self.store,
                    self.storage,
                    self.engine,
                    self.settings,
                    worker_id=worker_id,
                    on_terminal=self.notify_terminal,
                )
            except Exception:  # execute_job records failures on the job; this is a bug guard
                log.exception("embedded job execution raised", extra={"job_id": job_id})

    # --- the webhook thread ---------------------------------------------------------------------------
    def schedule_webhook(self, job_id: str, attempt: int, delay_s: float) -> None:
        with self._webhook_wakeup:
            heapq.heappush(self._webhooks, (time.monotonic() + delay_s, attempt, job_id))
            self._webhook_wakeup.notify()

    def _run_webhooks(self) -> None:
        from worker.webhooks import attempt_delivery

        while not self._stopping.is_set():
            with self._webhook_wakeup:
                if not self._webhooks:
                    self._webhook_wakeup.wait()
                    continue
                due, attempt, job_id = self._webhooks[0]
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    self._webhook_wakeup.wait(wait_s)
                    continue
                heapq.heappop(self._webhooks)
            retry_in = attempt_delivery(job_id, attempt, self.store, self.storage, self.settings)
            if retry_in is not None:
                self.schedule_webhook(job_id, attempt + 1, retry_in)


def make_job_queue(
    settings: Settings, embedded: bool, store: JobStore | None = None, storage: Storage | None = None
) -> JobQueue:
    if embedded:
        if store is None or storage is None:
            raise ValueError("the embedded job queue needs the gateway's job store and storage")
        return InProcessJobQueue(settings, store, storage)
    return CeleryJobQueue(settings)
