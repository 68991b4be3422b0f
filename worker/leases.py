"""Leases on running jobs: the heartbeat that renews one, and the reaper that requeues expired ones.

A worker that starts a job takes a lease in the job store and a heartbeat thread renews it every
``heartbeat_s``. A worker killed by SIGKILL or the OOM killer stops renewing; within ``lease_s`` plus
``reaper_interval_s`` some other worker's reaper sees the expired lease and either requeues the job (sends its
task again) or, when the job has already been delivered ``max_deliveries`` times, parks it in the dead-letter
list as failed with reason ``dead_lettered``. A Redis lock makes sure only one reaper acts at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from core import metrics
from core.contract import Job, JobStatus
from core.jobstore import InvalidTransition, JobStore
from core.lifecycle import cancel_past_start_deadline, dead_letter
from core.logs import bind
from core.settings import Settings, WorkerSettings

log = logging.getLogger(__name__)

RETENTION_CLAIM_NAME = "retention-sweep"
REAPER_LOCK_NAME = "reaper:lock"


class Heartbeat:
    """Renews a job's lease in a background thread; ``lost`` is set once the lease is someone else's."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, settings: WorkerSettings) -> None:
        self._store, self._job_id, self._worker_id = store, job_id, worker_id
        self._lease_s, self._interval_s = settings.lease_s, settings.heartbeat_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fae-heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                renewed = self._store.renew_lease(self._job_id, self._worker_id, self._lease_s)
            except Exception:  # a Redis blip: try again next beat; the lease outlives a few misses
                log.warning("lease renewal failed; retrying", extra={"job_id": self._job_id}, exc_info=True)
                continue
            if not renewed:
                log.error(
                    "lease lost: the reaper gave this job to another worker; abandoning it",
                    extra={"job_id": self._job_id, "worker_id": self._worker_id},
                )
                self.lost.set()
                return


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    past_start_deadline: list[str] = field(default_factory=list)  # canceled: no worker started them in time
    skipped: bool = False  # another reaper held the lock


def reap_once(
    store: JobStore,
    settings: WorkerSettings,
    requeue: Callable[[Job], None],
    on_terminal: Callable[[Job], None] | None = None,
    lock: RedisLock | None = None,
) -> ReapReport:
    """One reaper pass: requeue or dead-letter every running job whose lease ran out, and cancel every queued
    job whose start deadline passed before a worker reached it.

    ``requeue`` sends the job's task again; ``on_terminal`` gets jobs this pass made terminal (webhooks).
    """
    report = ReapReport()
    if lock is not None and not lock.acquire():
        report.skipped = True
        return report
    try:
        for job_id in store.expired_leases():
            job = store.get(job_id)
            if job is None or job.status is not JobStatus.running:
                continue
            with bind(job_id=job.id, tenant=job.tenant, request_id=job.request_id):  # the job's log context
                _reap(store, settings, job, requeue, on_terminal, report)
        report.past_start_deadline = cancel_past_start_deadlines(store, on_terminal)
        store.prune_inflight()  # jobs that expired unfinished: off the gateway's admission path
    finally:
        if lock is not None:
            lock.release()
    return report


def _reap(
    store: JobStore,
    settings: WorkerSettings,
    job: Job,
    requeue: Callable[[Job], None],
    on_terminal: Callable[[Job], None] | None,
    report: ReapReport,
) -> None:
    """Requeue one running job whose lease ran out, or dead-letter it once every delivery died."""
    deliveries = max(job.attempts, 1)
    if deliveries >= settings.max_deliveries:  # each delivery died: no more
        final = dead_letter(store, job, deliveries, settings.max_deliveries)
        report.dead_lettered.append(job.id)
        if on_terminal is not None and final is not None and final.status.terminal:
            on_terminal(final)
        return
    try:
        queued = store.transition(job.id, JobStatus.queued)
    except InvalidTransition:  # it finished or was requeued since we looked
        return
    metrics.JOB_FAILURES.labels(kind=job.kind.value, reason="worker_lost").inc()
    requeue(queued)
    report.requeued.append(job.id)
    log.warning("worker lost: job requeued", extra={"deliveries": deliveries})


def cancel_past_start_deadlines(store: JobStore, on_terminal: Callable[[Job], None] | None) -> list[str]:
    """Cancel the jobs still queued past their start deadline now, not when a worker reaches them (a stalled
    queue would show them waiting forever; the queued task finds them canceled and drops them). Their ids."""
    canceled = []
    due = store.due_start_deadlines()
    for job_id in due:
        job = store.get(job_id)
        if job is None:
            continue
        with bind(job_id=job.id, tenant=job.tenant, request_id=job.request_id):
            final = cancel_past_start_deadline(store, job)
        if final is not None:
            canceled.append(job.id)
            if on_terminal is not None:
                on_terminal(final)
    store.forget_start_deadlines(due)  # started, finished, canceled or gone: each is looked at once
    return canceled


class RedisLock:
    """A lock with a time limit (SET NX PX), so a reaper that dies holding it blocks nobody for long."""

    def __init__(self, redis_url: str, name: str, ttl_s: float) -> None:
        import redis

        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._name, self._ttl_ms = name, max(int(ttl_s * 1000), 1000)
        self._token = uuid.uuid4().hex

    def acquire(self) -> bool:
        return bool(self._redis.set(self._name, self._token, nx=True, px=self._ttl_ms))

    def release(self) -> None:
        # Delete only our own token: the lock may have timed out and been taken by another reaper.
        self._redis.eval(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            1,
            self._name,
            self._token,
        )

    def close(self) -> None:
        self._redis.close()


def reaper_lock(settings: Settings) -> RedisLock:
    """The lock all reapers share; it expires after a lease, so a dead holder blocks nobody for long."""
    return RedisLock(
        settings.redis.url, f"{settings.redis.namespace}:{REAPER_LOCK_NAME}", ttl_s=settings.worker.lease_s
    )


def retention_claim(settings: Settings) -> RedisLock:
    """The retention sweep's claim: whoever sets it sweeps; it lapses after one sweep interval, never released."""
    return RedisLock(
        settings.redis.url,
        f"{settings.redis.namespace}:{RETENTION_CLAIM_NAME}",
        ttl_s=settings.storage.retention_sweep_s,
    )


class Reaper:
    """``reap_once`` every ``reaper_interval_s`` in a daemon thread (every worker runs one); it closes
    ``lock`` when stopped."""

    def __init__(
        self,
        store: JobStore,
        settings: WorkerSettings,
        lock: RedisLock,
        requeue: Callable[[Job], None],
        on_terminal: Callable[[Job], None] | None = None,
    ) -> None:
        self._store, self._settings, self._lock = store, settings, lock
        self._requeue, self._on_terminal = requeue, on_terminal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Reaper:
        self._thread = threading.Thread(target=self.run_forever, name="fae-reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._lock.close()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                reap_once(self._store, self._settings, self._requeue, self._on_terminal, self._lock)
            except Exception:
                log.exception("reaper pass failed; trying again next interval")
            self._stop.wait(max(self._settings.reaper_interval_s - (time.monotonic() - started), 0.05))
