"""The job store in process memory (embedded mode): the Redis store's semantics, one lock, no persistence
except the rotated webhook secrets, optionally kept in a JSON file (embedded mode: under the data directory).

`_MemoryState` holds every table behind one re-entrant lock; each role class works on its own tables of it,
and `MemoryJobStore` composes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.atomic import write_bytes_atomically
from core.contract import (
    AdapterRecord,
    DeadLetter,
    Job,
    JobKind,
    JobStatus,
    WebhookSecretRecord,
    start_deadline_at,
)
from core.jobstore.base import (
    AdapterRegistry,
    Admission,
    AdmissionOutcome,
    IdempotencyConflict,
    InflightLimitExceeded,
    JobEventBus,
    JobEvents,
    JobNotFound,
    JobRecords,
    JobStore,
    LeaseBook,
    WatermarkIndex,
    WebhookSecretBook,
    gcra,
    key_digest,
    kind_value,
    list_score,
    parse_cursor,
    rate_budget,
    sort_adapters,
    sort_dead_letters,
)
from core.settings import LimitsSettings


class _MemoryState:
    """The tables of one memory store (lifetimes from `limits`), shared by its role classes."""

    def __init__(self, limits: LimitsSettings, webhook_secrets_file: Path | None = None) -> None:
        self.limits = limits
        self._lock = threading.RLock()
        self._webhook_secrets_file = webhook_secrets_file
        self._jobs: dict[str, Job] = {}
        self._expires: dict[str, float] = {}  # job id -> monotonic deadline (job_ttl_s)
        self._scores: dict[str, int] = {}  # job id -> list order
        self._idempotency: dict[tuple[str, str], tuple[str, str | None, float]] = {}
        self._queued: dict[str, dict[str, int]] = {}  # kind -> job id -> enqueue order
        self._inflight: dict[str, dict[str, float]] = {}  # tenant -> unfinished job id -> record deadline
        self._cancel: set[str] = set()
        self._leases: dict[str, tuple[str, float]] = {}  # job id -> (worker, monotonic expiry)
        self._deliveries: dict[str, int] = {}
        self._start_deadlines: dict[str, float] = {}  # job id -> epoch seconds of its start deadline
        self._dead: dict[str, DeadLetter] = {}
        self._rate_tat: dict[str, float] = {}
        self._adapters: dict[str, dict[str, AdapterRecord]] = {}
        self._webhook_secrets: dict[str, WebhookSecretRecord] = _load_webhook_secrets(webhook_secrets_file)
        # (tenant, watermark payload) -> (job id, output index, monotonic deadline)
        self._watermarks: dict[tuple[str, str], tuple[str, int, float]] = {}
        self._subscribers: dict[str, set[_MemoryJobEvents]] = {}
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _live(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and self._expires[job_id] < time.monotonic():
            for table in (self._jobs, self._expires, self._scores):
                table.pop(job_id, None)
            return None
        return job

    def _notify(self, job_id: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(job_id, ()))
        for subscriber in subscribers:
            subscriber.notify()


class MemoryJobRecords(_MemoryState, JobRecords):
    def create(
        self,
        job: Job,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_inflight: int | None = None,
    ) -> tuple[Job, bool]:
        with self._lock:
            if idempotency_key:
                existing = self.find_idempotent(job.tenant, idempotency_key, body_hash)
                if existing is not None:
                    return existing, False
            if max_inflight is not None and self.inflight_count(job.tenant) >= max_inflight:
                raise InflightLimitExceeded(job.tenant, max_inflight)
            self._jobs[job.id] = job
            self._expires[job.id] = time.monotonic() + self.limits.job_ttl_s
            if not job.status.terminal:
                self._inflight.setdefault(job.tenant, {})[job.id] = self._expires[job.id]
            self._scores[job.id] = list_score(int(job.created_at.timestamp() * 1000), self._next_seq())
            if (deadline_at := start_deadline_at(job)) is not None:
                self._start_deadlines[job.id] = deadline_at.timestamp()
            if idempotency_key:
                deadline = time.monotonic() + self.limits.idempotency_ttl_s
                self._idempotency[(job.tenant, key_digest(idempotency_key))] = (job.id, body_hash, deadline)
            return job, True

    def find_idempotent(self, tenant: str, idempotency_key: str, body_hash: str | None) -> Job | None:
        with self._lock:
            record = self._idempotency.get((tenant, key_digest(idempotency_key)))
            if record is None or record[2] < time.monotonic():
                return None
            job = self._live(record[0])
            if job is None:
                return None
            if record[1] != body_hash:
                raise IdempotencyConflict(record[0])
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._live(job_id)

    def delete_finished(self, job: Job) -> None:
        if not job.status.terminal:
            raise ValueError(f"job {job.id} is {job.status.value}; only finished jobs are deleted")
        with self._lock:
            for table in (self._jobs, self._expires, self._scores, self._deliveries):
                table.pop(job.id, None)

    def list_for_tenant(
        self, tenant: str, kind: JobKind | str | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        start = parse_cursor(cursor)
        wanted_kind = JobKind(kind) if kind else None
        with self._lock:
            candidates = [
                (self._scores[job_id], job)
                for job_id in list(self._jobs)
                if (job := self._live(job_id)) is not None
                and job.tenant == tenant
                and (wanted_kind is None or job.kind is wanted_kind)
                and (start is None or self._scores[job_id] < start)
            ]
        candidates.sort(key=lambda item: item[0], reverse=True)
        page = candidates[:limit]
        next_cursor = str(page[-1][0]) if len(candidates) > limit else None
        return [job for _, job in page], next_cursor

    def due_start_deadlines(self, limit: int = 500) -> list[str]:
        now = time.time()
        with self._lock:
            due = sorted((at, job_id) for job_id, at in self._start_deadlines.items() if at <= now)
        return [job_id for _, job_id in due[:limit]]

    def forget_start_deadlines(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._start_deadlines.pop(job_id, None)

    def inflight_count(self, tenant: str) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for deadline in self._inflight.get(tenant, {}).values() if deadline >= now)

    def prune_inflight(self) -> int:
        now = time.monotonic()
        with self._lock:
            expired = [
                (members, job_id)
                for members in self._inflight.values()
                for job_id, deadline in members.items()
                if deadline < now
            ]
            for members, job_id in expired:
                del members[job_id]
            return len(expired)

    def _mutate(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        with self._lock:
            old = self._live(job_id)
            if old is None:
                raise JobNotFound(job_id)
            new = change(old)
            self._jobs[job_id] = new
            self._expires[job_id] = time.monotonic() + self.limits.job_ttl_s
            if new.status.terminal:
                self._inflight.get(new.tenant, {}).pop(job_id, None)
            elif job_id in self._inflight.get(new.tenant, {}):
                self._inflight[new.tenant][job_id] = self._expires[job_id]
            if new.status is not old.status:
                queue = self._queued.setdefault(new.kind.value, {})
                if new.status is JobStatus.queued:
                    queue.setdefault(job_id, self._next_seq())
                else:
                    queue.pop(job_id, None)
                if new.status is not JobStatus.running:
                    self._leases.pop(job_id, None)
                if new.status.terminal:
                    self._cancel.discard(job_id)
        self._notify(job_id)
        return new

    def _set_cancel_flag(self, job_id: str) -> None:
        with self._lock:
            self._cancel.add(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancel

    def mark_enqueued(self, job: Job) -> None:
        with self._lock:
            self._queued.setdefault(job.kind.value, {}).setdefault(job.id, self._next_seq())

    def mark_dequeued(self, job: Job) -> None:
        with self._lock:
            self._queued.setdefault(job.kind.value, {}).pop(job.id, None)

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            job = self._live(job_id)
            if job is None or job.status is not JobStatus.queued:
                return None
            queue = self._queued.get(job.kind.value, {})
            if job_id not in queue:
                return None
            mine = queue[job_id]
            return sum(1 for order in queue.values() if order < mine)

    def queue_depth(self, kind: JobKind | str) -> int:
        with self._lock:
            return len(self._queued.get(kind_value(kind), {}))


class MemoryLeaseBook(_MemoryState, LeaseBook):
    def acquire_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        with self._lock:
            held = self._leases.get(job_id)
            now = time.monotonic()
            if held is not None and held[1] > now and held[0] != worker_id:
                return False
            self._leases[job_id] = (worker_id, now + lease_s)
            return True

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        with self._lock:
            held = self._leases.get(job_id)
            now = time.monotonic()
            if held is None or held[0] != worker_id or held[1] <= now:
                return False
            self._leases[job_id] = (worker_id, now + lease_s)
            return True

    def release_lease(self, job_id: str, worker_id: str) -> None:
        with self._lock:
            held = self._leases.get(job_id)
            if held is not None and held[0] == worker_id:
                del self._leases[job_id]

    def expired_leases(self) -> list[str]:
        with self._lock:
            now = time.monotonic()
            expired = []
            for job_id, (_, expiry) in list(self._leases.items()):
                if expiry > now:
                    continue
                job = self._live(job_id)
                if job is not None and job.status is JobStatus.running:
                    expired.append(job_id)
                else:
                    del self._leases[job_id]
            return expired

    def record_delivery(self, job_id: str) -> int:
        with self._lock:
            self._deliveries[job_id] = self._deliveries.get(job_id, 0) + 1
            return self._deliveries[job_id]

    def deliveries(self, job_id: str) -> int:
        with self._lock:
            return self._deliveries.get(job_id, 0)

    def add_dead_letter(self, record: DeadLetter) -> None:
        with self._lock:
            self._dead[record.job_id] = record

    def list_dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            return sort_dead_letters(self._dead.values())

    def count_dead_letters(self) -> int:
        with self._lock:
            return len(self._dead)

    def remove_dead_letter(self, job_id: str) -> bool:
        with self._lock:
            self._deliveries.pop(job_id, None)
            return self._dead.pop(job_id, None) is not None


class MemoryAdapterRegistry(_MemoryState, AdapterRegistry):
    def put_adapter(self, record: AdapterRecord) -> None:
        with self._lock:
            self._adapters.setdefault(record.tenant, {})[record.id] = record

    def get_adapter(self, tenant: str, adapter_id: str) -> AdapterRecord | None:
        with self._lock:
            return self._adapters.get(tenant, {}).get(adapter_id)

    def list_adapters(self, tenant: str) -> list[AdapterRecord]:
        with self._lock:
            return sort_adapters(self._adapters.get(tenant, {}).values())

    def delete_adapter(self, tenant: str, adapter_id: str) -> bool:
        with self._lock:
            return self._adapters.get(tenant, {}).pop(adapter_id, None) is not None


def _load_webhook_secrets(path: Path | None) -> dict[str, WebhookSecretRecord]:
    if path is None or not path.exists():
        return {}
    try:
        stored = json.loads(path.read_bytes())
        return {tenant: WebhookSecretRecord.model_validate(record) for tenant, record in stored.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"cannot read the rotated webhook secrets in {path}: {exc}") from exc


class MemoryWebhookSecretBook(_MemoryState, WebhookSecretBook):
    """Rotations survive a restart when the store has a `webhook_secrets_file`: each is written to it (atomically,
    mode 0600) before it is answered."""

    def get_webhook_secrets(self, tenant: str) -> WebhookSecretRecord | None:
        with self._lock:
            return self._webhook_secrets.get(tenant)

    def put_webhook_secrets(self, tenant: str, record: WebhookSecretRecord) -> None:
        self.update_webhook_secrets(tenant, lambda _: record)

    def update_webhook_secrets(
        self, tenant: str, change: Callable[[WebhookSecretRecord | None], WebhookSecretRecord]
    ) -> WebhookSecretRecord:
        with self._lock:
            new = change(self._webhook_secrets.get(tenant))
            if self._webhook_secrets_file is not None:
                records = {**self._webhook_secrets, tenant: new}
                stored = {name: record.model_dump(mode="json") for name, record in records.items()}
                write_bytes_atomically(self._webhook_secrets_file, json.dumps(stored).encode())
            self._webhook_secrets[tenant] = new
            return new


class MemoryWatermarkIndex(_MemoryState, WatermarkIndex):
    def put_watermark(self, tenant: str, payload: str, job_id: str, index: int) -> None:
        now = time.monotonic()
        with self._lock:
            # Now and then (every 1024 entries past 4096), drop the expired ones.
            if len(self._watermarks) >= 4096 and len(self._watermarks) & 1023 == 0:
                self._watermarks = {k: v for k, v in self._watermarks.items() if v[2] >= now}
            self._watermarks[(tenant, payload)] = (job_id, index, now + self.limits.job_ttl_s)

    def find_watermark(self, tenant: str, payload: str) -> tuple[str, int] | None:
        with self._lock:
            found = self._watermarks.get((tenant, payload))
            if found is None or found[2] < time.monotonic():
                return None
            return found[0], found[1]


class MemoryJobEventBus(_MemoryState, JobEventBus):
    def subscribe(self, job_id: str) -> JobEvents:
        return _MemoryJobEvents(self, job_id)

    def _register(self, job_id: str, events: _MemoryJobEvents, add: bool) -> None:
        with self._lock:
            subscribers = self._subscribers.setdefault(job_id, set())
            if add:
                subscribers.add(events)
            else:
                subscribers.discard(events)
                if not subscribers:
                    del self._subscribers[job_id]


class MemoryJobStore(
    MemoryJobRecords,
    MemoryLeaseBook,
    MemoryAdapterRegistry,
    MemoryWebhookSecretBook,
    MemoryWatermarkIndex,
    MemoryJobEventBus,
    JobStore,
):
    async def admit(
        self,
        tenant: str,
        kind: JobKind,
        limits: LimitsSettings,
        job: Job | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> Admission:
        limit = limits.rate_limit_per_minute
        with self._lock:  # held briefly and never across an await: the event loop is not blocked for long
            now = time.monotonic()
            tat = self._rate_tat.get(tenant, now)
            if idempotency_key:
                earlier = self.find_idempotent(tenant, idempotency_key, body_hash)
                if earlier is not None:
                    positioned = earlier.model_copy(
                        update={"queue_position": self.queue_position(earlier.id)}
                    )
                    return Admission(AdmissionOutcome.replayed, rate_budget(tat, now, limit), job=positioned)
            retry_after, new_tat = gcra(tat, now, limit)
            if retry_after is not None:
                budget = rate_budget(tat, now, limit)
                return Admission(AdmissionOutcome.rate_limited, budget, retry_after_s=retry_after)
            budget = rate_budget(tat, now, limit)
            if self.inflight_count(tenant) >= limits.max_inflight_per_tenant:
                return Admission(AdmissionOutcome.inflight_limited, budget)
            depth = self.queue_depth(kind)
            if depth >= limits.max_queue_depth:
                return Admission(AdmissionOutcome.queue_full, budget, queue_depth=depth)
            if job is None:
                return Admission(AdmissionOutcome.admissible, budget, queue_depth=depth)
            self._rate_tat[tenant] = new_tat
            self.create(job, idempotency_key, body_hash)
            self.mark_enqueued(job)
            created = job.model_copy(update={"queue_position": depth})
            budget = rate_budget(new_tat, now, limit)
            return Admission(AdmissionOutcome.created, budget, job=created, queue_depth=depth + 1)

    async def fetch(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._live(job_id)
            if job is None or job.status is not JobStatus.queued:
                return job
            return job.model_copy(update={"queue_position": self.queue_position(job_id)})

    def ping(self) -> bool:
        return True


class _MemoryJobEvents(JobEvents):
    """Publishers run on any thread; the waiter is a coroutine, woken through its loop."""

    def __init__(self, store: MemoryJobEventBus, job_id: str) -> None:
        self._store, self._job_id = store, job_id
        self._lock = threading.Lock()
        self._pending = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def __aenter__(self) -> _MemoryJobEvents:
        self._store._register(self._job_id, self, add=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._store._register(self._job_id, self, add=False)

    def notify(self) -> None:
        with self._lock:
            self._pending = True
            if self._waiter is not None:
                loop, event = self._waiter
                with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
                    loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout_s: float) -> bool:
        event = asyncio.Event()
        with self._lock:
            if self._pending:
                self._pending = False
                return True
            self._waiter = (asyncio.get_running_loop(), event)
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout_s, 0.0))
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiter = None
                self._pending = False
