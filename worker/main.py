"""Process entry points: ``run_worker`` (``fae worker``) and ``run_reaper`` (``fae reaper``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from core.settings import Settings
from core.tasks import ALL_QUEUES

log = logging.getLogger(__name__)


def check_queues(queues: Sequence[str]) -> list[str]:
    chosen = [q.strip() for q in queues if q.strip()]
    unknown = sorted(set(chosen) - set(ALL_QUEUES))
    if not chosen or unknown:
        raise ValueError(
            f"unknown or missing queues {unknown or chosen}; choose from {', '.join(ALL_QUEUES)}"
        )
    return chosen


def run_worker(settings: Settings, queues: Sequence[str]) -> int:
    """Run a Celery worker on ``queues``; blocks until the worker stops.

    One process per GPU (``FAE_DEVICE=cuda:N``) with a thread pool of ``FAE_WORKER_CONCURRENCY`` jobs: each job
    thread waits on the engine, whose device thread denoises all of them together. The model is loaded and
    warmed before the consumer starts (see ``worker.celery_app``). A worker for ``webhooks`` alone loads no model.
    """
    chosen = check_queues(queues)
    if "generate" in chosen:  # refuse to start (FAE_C2PA_WITHOUT_SIGNER=refuse) before loading anything
        from worker.provenance import provenance_for

        provenance_for(settings.provenance)
    from worker import celery_app

    celery_app.configure(settings)
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={settings.worker.concurrency}",
        f"--queues={','.join(chosen)}",
        f"--hostname=fae-{os.getpid()}@%h",
        f"--loglevel={settings.process.log_level}",
        # No broadcast chatter between workers: they coordinate through the job store.
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    celery_app.app.worker_main(argv)
    return 0


def run_reaper(settings: Settings, once: bool = False) -> int:
    """Run the lease reaper alone (every worker already runs one; this is for operators and cron)."""
    from core.jobqueue import CeleryJobQueue
    from core.jobstore import make_job_store
    from core.storage import make_storage
    from worker.leases import Reaper, reap_once, reaper_lock, retention_claim
    from worker.retention import RetentionSweeper

    store = make_job_store(settings)
    sender = CeleryJobQueue(settings)
    try:
        if once:
            lock = reaper_lock(settings)
            report = reap_once(store, settings.worker, sender.enqueue, sender.notify_terminal, lock)
            lock.close()
            log.info(
                "reaper pass done",
                extra={
                    "requeued": report.requeued,
                    "dead_lettered": report.dead_lettered,
                    "skipped": report.skipped,
                },
            )
            return 0
        sweeper = RetentionSweeper(make_storage(settings), settings.storage, store, retention_claim(settings))
        sweeper.start()
        try:
            Reaper(
                store, settings.worker, reaper_lock(settings), sender.enqueue, sender.notify_terminal
            ).run_forever()
        finally:
            sweeper.stop()
        return 0
    finally:
        sender.stop()
        store.close()
