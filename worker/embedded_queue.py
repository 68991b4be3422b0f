"""Embedded mode's job queue: jobs run in the gateway's process through the same code as a Celery worker.

``FAE_WORKER_CONCURRENCY`` threads run jobs through the same ``execute_job`` as the Celery tasks (so, as in a
Celery worker, that many jobs share the engine's generator calls), one more delivers webhooks with the same
retry policy, and one cancels queued jobs past their start deadline (a Celery deployment's reaper does that). The model loads in the background at ``start``, so the gateway answers at once and turns ready
when the model is warm. Only the composition root (``fae/embedded.py``) builds one.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import threading
import time
from typing import Any

from core import metrics
from core.contract import Job
from core.heap import freeze_startup_objects
from core.jobqueue import JobQueue
from core.jobstore import JobStore
from core.settings import Settings
from core.storage import Storage
from core.tasks import TASK_FOR_KIND
from core.webhooks import EmittedEvent
from worker.engine import Engine, load_and_warm
from worker.jobs import execute_job
from worker.jobs.common import JobContext, make_worker_id
from worker.jobs.webhook import attempt_delivery
from worker.leases import cancel_past_start_deadlines

log = logging.getLogger(__name__)


class InProcessJobQueue(JobQueue):
    """Embedded mode: job threads run jobs through the same ``execute_job`` as the Celery task, one more
    delivers webhooks with the same retry policy. The model loads in the background at ``start``."""

    def __init__(self, settings: Settings, store: JobStore, storage: Storage) -> None:
        self.settings, self.store, self.storage = settings, store, storage
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._waiting: collections.Counter[str] = collections.Counter()
        # heap of (due, order, attempt, job id, event or "", emitted event or None); the order breaks ties
        self._webhooks: list[tuple[float, int, int, str, str, dict[str, Any] | None]] = []
        self._webhook_order = itertools.count()
        self._webhook_wakeup = threading.Condition()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []  # job threads and the webhook thread
        self._loaded = threading.Event()  # set once the engine is warm (or failed to load: then no context)
        self._context: JobContext | None = None
        self.engine: Engine | None = None

    # --- JobQueue ------------------------------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        queue_name = TASK_FOR_KIND[job.kind][1]
        with self._lock:
            self._waiting[queue_name] += 1
        self._jobs.put((job.id, queue_name))

    def notify_terminal(self, job: Job) -> None:
        if job.webhook_url:
            self.schedule_webhook(job.id, attempt=1, delay_s=0.0)

    def notify_event(self, job: Job, event: str) -> None:
        if job.webhook_url:
            emitted = EmittedEvent.of(job, event).model_dump(mode="json")
            self.schedule_webhook(job.id, attempt=1, delay_s=0.0, event=event, emitted=emitted)

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
        threading.Thread(target=self._load, name="fae-inprocess-loader", daemon=True).start()
        self._threads = [
            threading.Thread(target=self._run_jobs, name=f"fae-inprocess-worker-{i}", daemon=True)
            for i in range(self.settings.worker.concurrency)
        ]
        self._threads += [
            threading.Thread(target=self._run_webhooks, name="fae-inprocess-webhooks", daemon=True),
            threading.Thread(target=self._run_deadlines, name="fae-inprocess-deadlines", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        for _ in range(self.settings.worker.concurrency):
            self._jobs.put(None)
        with self._webhook_wakeup:
            self._webhook_wakeup.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        metrics.WORKER_READY.set(0)
        if self.engine is not None:
            self.engine.close()

    # --- the job threads ------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.engine = load_and_warm(self.settings.engine, self.settings.catalog)
            self._context = JobContext(
                self.store,
                self.storage,
                self.engine,
                self.settings,
                worker_id=make_worker_id(),
                on_terminal=self.notify_terminal,
                on_event=self.notify_event,
            )
            metrics.WORKER_READY.set(1)
            if self.settings.process.gc_freeze:  # the gateway froze its own at start; this is the model's
                freeze_startup_objects("embedded model loaded")
        except Exception:
            log.exception("embedded worker could not load its model; jobs stay queued")
        finally:
            self._loaded.set()  # the job threads start, or (no context) give up

    def _run_jobs(self) -> None:
        while not self._loaded.wait(0.5):
            if self._stopping.is_set():
                return
        context = self._context
        if context is None:  # the model did not load: jobs stay queued, /readyz says not ready
            return
        while not self._stopping.is_set():
            item = self._jobs.get()
            if item is None:
                return
            job_id, queue_name = item
            with self._lock:
                self._waiting[queue_name] -= 1
            try:
                execute_job(job_id, context)
            except Exception:  # execute_job records failures on the job; this is a bug guard
                log.exception("embedded job execution raised", extra={"job_id": job_id})

    def _run_deadlines(self) -> None:
        while not self._stopping.wait(self.settings.worker.reaper_interval_s):
            try:
                cancel_past_start_deadlines(self.store, self.notify_terminal)
            except Exception:
                log.exception("start-deadline sweep failed; trying again next interval")

    # --- the webhook thread ---------------------------------------------------------------------------
    def schedule_webhook(
        self,
        job_id: str,
        attempt: int,
        delay_s: float,
        event: str | None = None,
        emitted: dict[str, Any] | None = None,
    ) -> None:
        """One delivery attempt of the job's `event` (None: its terminal status; `emitted`: a start or progress
        event as captured when emitted) after `delay_s`."""
        with self._webhook_wakeup:
            due, order = time.monotonic() + delay_s, next(self._webhook_order)
            heapq.heappush(self._webhooks, (due, order, attempt, job_id, event or "", emitted))
            self._webhook_wakeup.notify()

    def _run_webhooks(self) -> None:
        while not self._stopping.is_set():
            with self._webhook_wakeup:
                if not self._webhooks:
                    self._webhook_wakeup.wait()
                    continue
                due, _, attempt, job_id, event, emitted = self._webhooks[0]
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    self._webhook_wakeup.wait(wait_s)
                    continue
                heapq.heappop(self._webhooks)
            retry_in = attempt_delivery(
                job_id, attempt, self.store, self.storage, self.settings, event or None, emitted
            )
            if retry_in is not None:
                self.schedule_webhook(job_id, attempt + 1, retry_in, event or None, emitted)
