"""What one worker process holds: settings, job store, storage, the engine, the reaper and the HTTP server.

``boot`` runs in Celery's ``worker_init`` signal, i.e. in the worker process before its consumer starts: the
model is loaded and warmed there, so the worker takes no job before it can run one. ``/readyz`` turns ready
(and ``fae_worker_ready`` 1) only once the consumer is up (``worker_ready``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core import metrics
from core.heap import freeze_startup_objects
from core.jobqueue import CeleryJobQueue
from core.jobstore import JobStore, make_job_store
from core.settings import Settings
from core.storage import Storage, make_storage
from worker.engine import Engine, load_and_warm
from worker.http import WorkerHTTPServer
from worker.jobs.common import JobContext, make_worker_id
from worker.leases import Reaper, reaper_lock, retention_claim
from worker.provenance import provenance_for
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
        self.storage_watch: StorageWatch | None = None
        self.sweeper: RetentionSweeper | None = None
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
        if "generate" in self.queues:  # the signer first: a worker without one refuses before loading a model
            provenance_for(settings.provenance)
        if MODEL_QUEUES & set(self.queues):
            self.engine = load_and_warm(settings.engine, settings.catalog)
            self.jobs = JobContext(
                self.store,
                self.storage,
                self.engine,
                settings,
                worker_id=self.worker_id,
                on_terminal=self.sender.notify_terminal,
                on_event=self.sender.notify_event,
            )
        self.reaper = Reaper(
            self.store,
            settings.worker,
            reaper_lock(settings),
            requeue=self.sender.enqueue,
            on_terminal=self.sender.notify_terminal,
        ).start()
        self.sweeper = RetentionSweeper(
            self.storage, settings.storage, self.store, retention_claim(settings)
        ).start()
        log.info("worker booted", extra={"worker_id": self.worker_id, "queues": self.queues})
        if settings.process.gc_freeze:  # the model and its compiled graphs stay for the process's life
            freeze_startup_objects("worker booted")

    def mark_consuming(self, pause: Callable[[str], None], resume: Callable[[str], None]) -> None:
        """The consumer is up; from now on it stops taking the model queues' jobs while storage is down
        (``pause``/``resume`` a queue), so the queue, not this worker's retry timers, holds them meanwhile."""
        self.consuming = True
        metrics.WORKER_READY.set(1)
        log.info("worker ready: consuming", extra={"worker_id": self.worker_id, "queues": self.queues})
        model_queues = [q for q in self.queues if q in MODEL_QUEUES]
        if self.storage is not None and model_queues:
            self.storage_watch = StorageWatch(
                self.storage, self.settings.worker.heartbeat_s, model_queues, pause, resume
            ).start()

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
        stops = [self.storage_watch and self.storage_watch.stop, self.reaper and self.reaper.stop]
        stops += [self.sweeper and self.sweeper.stop]
        stops += [self.engine and self.engine.close]
        stops += [self.http and self.http.stop, self.sender and self.sender.stop]
        for stop in filter(None, stops):
            try:
                stop()
            except Exception:
                log.warning("error while stopping the worker", exc_info=True)
        if self.store is not None:
            self.store.close()
        metrics.mark_process_dead()


class StorageWatch:
    """Pings object storage every ``interval_s``; on the first failure pauses the given queues, on recovery
    resumes them. A job that started before the outage retries its upload (``worker/outputs.py``)."""

    def __init__(
        self,
        storage: Storage,
        interval_s: float,
        queues: list[str],
        pause: Callable[[str], None],
        resume: Callable[[str], None],
    ) -> None:
        self.storage, self.interval_s, self.queues = storage, interval_s, queues
        self._pause, self._resume = pause, resume
        self.paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fae-storage-watch", daemon=True)

    def start(self) -> StorageWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self) -> None:
        """One ping, and the pause or resume it calls for."""
        healthy = self.storage.ping()
        if healthy == (not self.paused):
            return
        action = self._resume if healthy else self._pause
        try:
            for queue in self.queues:
                action(queue)
        except Exception:  # the broker may be down too: try again at the next interval
            log.warning("could not %s consuming", "resume" if healthy else "pause", exc_info=True)
            return
        self.paused = not healthy
        log.warning(
            "storage %s: %s consuming %s",
            "is back" if healthy else "is unavailable",
            "resumed" if healthy else "paused",
            ",".join(self.queues),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
