"""What one worker process holds: settings, job store, storage, the engine, the reaper and the HTTP server.

``boot`` runs in Celery's ``worker_init`` signal, i.e. in the worker process before its consumer starts: the
model is loaded and warmed there, so the worker takes no job before it can run one. ``/readyz`` turns ready
(and ``fae_worker_ready`` 1) only once the consumer is up (``worker_ready``).
"""

from __future__ import annotations

import logging

from core import metrics
from core.jobqueue import CeleryJobQueue
from core.jobstore import JobStore, make_job_store
from core.settings import Settings
from core.storage import Storage, make_storage
from worker.engine import Engine, load_and_warm
from worker.http import WorkerHTTPServer
from worker.jobs.common import JobContext, make_worker_id
from worker.leases import Reaper, reaper_lock
from worker.retention import RetentionSweeper

log = logging.getLogger(__name__)

# Queues whose tasks need the model on this process's device.
MODEL_QUEUES = frozenset({"generate", "finetune"})


class WorkerRuntime:
    """One worker process's parts, built by ``boot`` and stopped by ``shutdown``."""

    def __init__(self, settings: Settings, queues: list[str]) -> None:
        self.settings, self.queues = settings, list(queues)
        self.worker_id = make_worker_id()
        self.store: JobStore | None = None
        self.storage: Storage | None = None
        self.sender: CeleryJobQueue | None = None
        self.engine: Engine | None = None
        self.reaper: Reaper | None = None
        self.jobs: JobContext | None = None  # set when this process serves a model queue
        self.http: WorkerHTTPServer | None = None
        self.consuming = False

    def boot(self) -> None:
        settings = self.settings
        metrics.WORKER_READY.set(0)
        if settings.worker.http_port:
            self.http = WorkerHTTPServer(
                settings.gateway.host, settings.worker.http_port, self.readiness
            ).start()
        self.store = make_job_store(settings)
        self.storage = make_storage(settings)
        self.sender = CeleryJobQueue(settings)
        if MODEL_QUEUES & set(self.queues):
            self.engine = load_and_warm(settings.engine, settings.catalog)
            self.jobs = JobContext(
                self.store,
                self.storage,
                self.engine,
                settings,
                worker_id=self.worker_id,
                on_terminal=self.sender.notify_terminal,
            )
        self.reaper = Reaper(
            self.store,
            settings.worker,
            reaper_lock(settings),
            requeue=self.sender.enqueue,
            on_terminal=self.sender.notify_terminal,
            sweeper=RetentionSweeper(self.storage, settings.storage),
        ).start()
        log.info("worker booted", extra={"worker_id": self.worker_id, "queues": self.queues})

    def mark_consuming(self) -> None:
        self.consuming = True
        metrics.WORKER_READY.set(1)
        log.info("worker ready: consuming", extra={"worker_id": self.worker_id, "queues": self.queues})

    def readiness(self) -> tuple[bool, dict[str, object]]:
        checks = {
            "model": self.engine.ready if self.engine is not None else not (MODEL_QUEUES & set(self.queues)),
            "consuming": self.consuming,
            "redis": self.store is not None and self.store.ping(),
            "storage": self.storage is not None and self.storage.ping(),
        }
        return all(checks.values()), {"checks": checks, "queues": self.queues}

    def job_context(self) -> JobContext:
        """What a job task runs with; only a process that consumes a model queue has one."""
        if self.jobs is None:
            raise RuntimeError(f"this worker (queues {self.queues}) cannot run jobs: it has no model loaded")
        return self.jobs

    def shutdown(self) -> None:
        self.consuming = False
        metrics.WORKER_READY.set(0)
        stops = [self.reaper and self.reaper.stop, self.engine and self.engine.close]
        stops += [self.http and self.http.stop, self.sender and self.sender.stop]
        for stop in filter(None, stops):
            try:
                stop()
            except Exception:
                log.warning("error while stopping the worker", exc_info=True)
        if self.store is not None:
            self.store.close()
        metrics.mark_process_dead()
