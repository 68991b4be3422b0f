"""The job store's roles, its errors, and the rules both backends share.

The store is the composition of five roles (`JobRecords`, `LeaseBook`, `AdapterRegistry`, `WebhookSecretBook`,
`JobEventBus`) plus what spans them, admission (rate budget, limits, storing and queueing in one step); callers that need
one role can be typed with it. A backend only decides *where* records
live and how a change is made atomic: what a transition does to a job (timestamps, attempts, the refusal to
go backwards), how a cancel request lands, and what dead-lettering does are defined once here, on top of
the contract's `can_transition`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.contract import (
    AdapterRecord,
    DeadLetter,
    Job,
    JobError,
    JobKind,
    JobStatus,
    Progress,
    WebhookSecretRecord,
    can_transition,
)
from core.settings import LimitsSettings


class JobStoreError(Exception):
    """Base of the job store's errors."""


class JobNotFound(JobStoreError, KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id} does not exist"


class InvalidTransition(JobStoreError):
    def __init__(self, job_id: str, current: JobStatus, new: JobStatus) -> None:
        super().__init__(f"job {job_id} is {current.value} and cannot become {new.value}")
        self.job_id, self.current, self.new = job_id, current, new


class IdempotencyConflict(JobStoreError):
    """The same Idempotency-Key was used before with a different request body."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"this Idempotency-Key was already used for job {job_id} with a different body")
        self.job_id = job_id


class InflightLimitExceeded(JobStoreError):
    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant} already has {limit} unfinished jobs")
        self.tenant, self.limit = tenant, limit


# Fields that only `create` and `transition` may set.
_IMMUTABLE_FIELDS = frozenset({"id", "kind", "tenant", "status", "created_at"})
RATE_PERIOD_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def body_hash(payload: Any) -> str:
    """A stable hash of a request body (key order and whitespace do not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_digest(value: str) -> str:
    """Client-chosen strings (idempotency keys) become fixed-size, charset-safe store keys."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def kind_value(kind: JobKind | str) -> str:
    return JobKind(kind).value


def apply_transition(job: Job, new_status: JobStatus, fields: dict[str, Any]) -> Job:
    """The job after moving to `new_status`; raises InvalidTransition when the contract refuses."""
    new_status = JobStatus(new_status)
    if not can_transition(job.status, new_status):
        raise InvalidTransition(job.id, job.status, new_status)
    bad = _IMMUTABLE_FIELDS & fields.keys()
    if bad:
        raise ValueError(f"transition cannot set {sorted(bad)}")
    data = job.model_dump()
    now = utcnow()
    if new_status is JobStatus.running:
        data["attempts"] = job.attempts + 1
        data["started_at"] = now
        data["queue_position"] = None
    elif new_status is JobStatus.queued:
        # Requeued after its worker died: progress starts over, the next run gets a fresh start time.
        data["progress"] = Progress()
        data["started_at"] = None
    if new_status.terminal:
        data["finished_at"] = now
        data["queue_position"] = None
    data.update(fields)
    data["status"] = new_status
    return Job.model_validate(data)


def apply_update(job: Job, fields: dict[str, Any]) -> Job:
    bad = _IMMUTABLE_FIELDS & fields.keys()
    if bad:
        raise ValueError(f"update cannot set {sorted(bad)}; use transition() for status")
    data = job.model_dump()
    data.update(fields)
    return Job.model_validate(data)


def apply_progress(job: Job, step: int, total: int, eta_s: float | None, loss: float | None) -> Job:
    return job.model_copy(update={"progress": Progress(step=step, total=total, eta_s=eta_s, loss=loss)})


def gcra(tat: float | None, now: float, limit_per_minute: int) -> tuple[float | None, float]:
    """Generic cell rate algorithm: (retry_after or None, new theoretical arrival time).

    Allows a burst of `limit_per_minute` requests, then one every 60/limit seconds.
    """
    interval = RATE_PERIOD_S / limit_per_minute
    tat = max(tat if tat is not None else now, now)
    new_tat = tat + interval
    allow_at = new_tat - RATE_PERIOD_S
    if allow_at > now:
        return allow_at - now, tat
    return None, new_tat


@dataclass(frozen=True)
class RateBudget:
    """A tenant's per-minute budget as the IETF `RateLimit` headers state it."""

    limit: int
    remaining: int
    reset_s: float  # until the whole budget is back


def rate_budget(tat: float, now: float, limit_per_minute: int) -> RateBudget:
    """The budget left at `now` when the theoretical arrival time (GCRA) is `tat`."""
    interval = RATE_PERIOD_S / limit_per_minute
    tat = max(tat, now)
    remaining = max(0, math.floor((now + RATE_PERIOD_S - tat) / interval + 1e-9))
    return RateBudget(limit_per_minute, min(remaining, limit_per_minute), tat - now)


class AdmissionOutcome(enum.StrEnum):
    created = "created"
    replayed = "replayed"  # an earlier request with this idempotency key and body made the job
    admissible = "admissible"  # a check without a job: it would be admitted now
    rate_limited = "rate_limited"
    inflight_limited = "inflight_limited"
    queue_full = "queue_full"


@dataclass(frozen=True)
class Admission:
    """What one atomic admission decided. Only `created` spends rate budget."""

    outcome: AdmissionOutcome
    budget: RateBudget
    job: Job | None = None  # created or replayed, its `queue_position` current
    retry_after_s: float | None = None  # rate_limited only
    queue_depth: int | None = None  # known when the queue was looked at


def list_score(created_ms: int, seq: int) -> int:
    """Sort key of a tenant's job list: creation time in ms with a sequence tie-breaker (fits a double)."""
    return created_ms * 1000 + seq % 1000


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not cursor.isdigit() or len(cursor) > 20:
        raise ValueError("invalid cursor")
    return int(cursor)


def request_cancel_flag(job: Job) -> Job:
    """The job with its cancel request recorded (a job that finished meanwhile stays as it is)."""
    return job if job.status.terminal else job.model_copy(update={"cancel_requested": True})


def sort_adapters(records: Iterable[AdapterRecord]) -> list[AdapterRecord]:
    return sorted(records, key=lambda r: (r.created_at.timestamp(), r.id))


def sort_dead_letters(records: Iterable[DeadLetter]) -> list[DeadLetter]:
    return sorted(records, key=lambda r: (r.at.timestamp(), r.job_id))


class JobEvents(abc.ABC):
    """A subscription to one job's changes. Enter it *before* reading the job, so no change is missed."""

    @abc.abstractmethod
    async def __aenter__(self) -> JobEvents: ...

    @abc.abstractmethod
    async def __aexit__(self, *exc_info: object) -> None: ...

    @abc.abstractmethod
    async def wait(self, timeout_s: float) -> bool:
        """True when the job changed (re-read it), False after `timeout_s` without a change."""


class JobRecords(abc.ABC):
    """Jobs, their states, the per-tenant index, the queue index and cancel flags.

    A backend supplies storage and atomicity (`_mutate`, `_set_cancel_flag`); how a job changes is decided
    here. Methods are synchronous (the gateway runs them in its thread pool)."""

    @abc.abstractmethod
    def create(
        self,
        job: Job,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_inflight: int | None = None,
    ) -> tuple[Job, bool]:
        """Store a new job; (existing job, False) for a repeated tenant+key+body.

        Raises IdempotencyConflict (same key, other body) and InflightLimitExceeded (checked atomically).
        """

    @abc.abstractmethod
    def find_idempotent(self, tenant: str, idempotency_key: str, body_hash: str) -> Job | None:
        """The job an earlier request with this key created (None if none); IdempotencyConflict if the
        body differs."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    def get_for_tenant(self, tenant: str, job_id: str) -> Job | None:
        job = self.get(job_id)
        return job if job is not None and job.tenant == tenant else None

    @abc.abstractmethod
    def list_for_tenant(
        self, tenant: str, kind: JobKind | str | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first; the second value is the cursor of the next page (None on the last page)."""

    @abc.abstractmethod
    def delete_finished(self, job: Job) -> None:
        """Forget a terminal job (`DELETE /v1/jobs/{id}`): its record, list entries and delivery count. Only
        terminal jobs, which never change again, so checking the status first is enough."""

    @abc.abstractmethod
    def inflight_count(self, tenant: str) -> int:
        """The tenant's unfinished jobs (one whose record expired unfinished no longer counts)."""

    @abc.abstractmethod
    def prune_inflight(self) -> int:
        """Forget in-flight entries whose record expired unfinished (the reaper; admission never pays for
        them). How many were dropped."""

    @abc.abstractmethod
    def _mutate(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """Replace the job with `change(job)` atomically and publish the change; a status change also
        updates the queue index, voids a lease that no longer applies and clears a finished job's cancel
        flag. JobNotFound when the job does not exist."""

    @abc.abstractmethod
    def _set_cancel_flag(self, job_id: str) -> None:
        """Record the cancel request the worker polls (`cancel_requested`)."""

    def transition(self, job_id: str, new_status: JobStatus, **fields: Any) -> Job:
        return self._mutate(job_id, lambda job: apply_transition(job, new_status, fields))

    def update(self, job_id: str, **fields: Any) -> Job:
        return self._mutate(job_id, lambda job: apply_update(job, fields))

    def set_progress(
        self, job_id: str, step: int, total: int, eta_s: float | None = None, loss: float | None = None
    ) -> Job:
        return self._mutate(job_id, lambda job: apply_progress(job, step, total, eta_s, loss))

    def request_cancel(self, job_id: str) -> Job:
        """Queued: canceled at once. Running: a flag the worker reads between steps. Terminal: unchanged."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        if job.status.terminal:
            return job
        if job.status is JobStatus.queued:
            try:
                return self.transition(job_id, JobStatus.canceled)
            except InvalidTransition:  # a worker took it meanwhile: cancel it as a running job
                pass
        self._set_cancel_flag(job_id)
        return self._mutate(job_id, request_cancel_flag)

    @abc.abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    @abc.abstractmethod
    def mark_enqueued(self, job: Job) -> None: ...

    @abc.abstractmethod
    def mark_dequeued(self, job: Job) -> None: ...

    @abc.abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """How many jobs of the same kind are ahead of this queued job (0: next); None if not queued."""

    @abc.abstractmethod
    def queue_depth(self, kind: JobKind | str) -> int: ...

    @abc.abstractmethod
    def due_start_deadlines(self, limit: int = 500) -> list[str]:
        """Jobs created with a `start_deadline_s` that has passed, earliest first, whatever their status now
        (the reaper cancels those still waiting to start, then forgets them all)."""

    @abc.abstractmethod
    def forget_start_deadlines(self, job_ids: list[str]) -> None: ...


class LeaseBook(abc.ABC):
    """Which worker holds a running job, how often a job was delivered, and the dead-letter list."""

    @abc.abstractmethod
    def acquire_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool: ...

    @abc.abstractmethod
    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        """False when the lease is another worker's or already ran out (the worker should stop)."""

    @abc.abstractmethod
    def release_lease(self, job_id: str, worker_id: str) -> None: ...

    @abc.abstractmethod
    def expired_leases(self) -> list[str]:
        """Running jobs whose lease ran out (their worker died); the reaper requeues them."""

    @abc.abstractmethod
    def record_delivery(self, job_id: str) -> int: ...

    @abc.abstractmethod
    def deliveries(self, job_id: str) -> int:
        """How many times the job was delivered to a worker (0 if never, or forgotten)."""

    @abc.abstractmethod
    def add_dead_letter(self, record: DeadLetter) -> None:
        """Put `record` on the dead-letter list (replacing an earlier one of the same job)."""

    @abc.abstractmethod
    def list_dead_letters(self) -> list[DeadLetter]:
        """Oldest first."""

    @abc.abstractmethod
    def count_dead_letters(self) -> int: ...

    @abc.abstractmethod
    def remove_dead_letter(self, job_id: str) -> bool:
        """Drop the job's dead letter and its delivery count; False if it had none."""


class AdapterRegistry(abc.ABC):
    """The fine-tuned adapters of each tenant (their weights live in storage under `record.key`)."""

    @abc.abstractmethod
    def put_adapter(self, record: AdapterRecord) -> None: ...

    @abc.abstractmethod
    def get_adapter(self, tenant: str, adapter_id: str) -> AdapterRecord | None: ...

    @abc.abstractmethod
    def list_adapters(self, tenant: str) -> list[AdapterRecord]:
        """Oldest first."""

    @abc.abstractmethod
    def delete_adapter(self, tenant: str, adapter_id: str) -> bool: ...


class WebhookSecretBook(abc.ABC):
    """Rotated webhook secrets per tenant (a tenant that never rotated has none: its secret is configured or
    derived, see `core.webhooks.secret_for_tenant`)."""

    @abc.abstractmethod
    def get_webhook_secrets(self, tenant: str) -> WebhookSecretRecord | None: ...

    @abc.abstractmethod
    def put_webhook_secrets(self, tenant: str, record: WebhookSecretRecord) -> None: ...

    @abc.abstractmethod
    def update_webhook_secrets(
        self, tenant: str, change: Callable[[WebhookSecretRecord | None], WebhookSecretRecord]
    ) -> WebhookSecretRecord:
        """Replace the tenant's record with ``change(record)`` atomically (concurrent updates both apply, one
        after the other; ``change`` may run more than once) and return what was stored."""


class WatermarkIndex(abc.ABC):
    """Which job's output carries a watermark payload, per tenant (verify looks payloads up only in the
    caller's own tenant). Entries live as long as job records (`job_ttl_s`)."""

    @abc.abstractmethod
    def put_watermark(self, tenant: str, payload: str, job_id: str, index: int) -> None: ...

    @abc.abstractmethod
    def find_watermark(self, tenant: str, payload: str) -> tuple[str, int] | None:
        """(job id, output index) of the tenant's output with this payload, else None."""


class JobEventBus(abc.ABC):
    """Change notifications of single jobs (event streams and `Prefer: wait` follow them); every state change
    the store writes publishes one, so there is nothing to publish from outside."""

    @abc.abstractmethod
    def subscribe(self, job_id: str) -> JobEvents: ...


class JobStore(JobRecords, LeaseBook, AdapterRegistry, WebhookSecretBook, WatermarkIndex, JobEventBus):
    """All roles over one backend, plus the rules that need more than one of them."""

    @abc.abstractmethod
    async def admit(
        self,
        tenant: str,
        kind: JobKind,
        limits: LimitsSettings,
        job: Job | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> Admission:
        """One atomic step, constant cost whatever the tenant's backlog: replay an idempotent retry (never
        limited), else check rate, the tenant's in-flight count and the queue depth, in that order; when
        all pass, store `job`, index it, put it in its kind's queue and spend one unit of rate budget.
        Without `job` it only checks. IdempotencyConflict for a reused key with another body."""

    @abc.abstractmethod
    async def fetch(self, job_id: str) -> Job | None:
        """The job with its current `queue_position`, in one read (the gateway's GET)."""

    def dead_letter(self, job_id: str, reason: str) -> None:
        """Park a job that keeps killing its worker; an unfinished job also becomes failed."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        self.add_dead_letter(
            DeadLetter(
                job_id=job_id,
                tenant=job.tenant,
                kind=job.kind,
                reason=reason,
                deliveries=self.deliveries(job_id),
                at=utcnow(),
            )
        )
        if not job.status.terminal:
            with contextlib.suppress(InvalidTransition):  # finished meanwhile
                error = JobError(reason="dead_lettered", message=reason)
                self.transition(job_id, JobStatus.failed, error=error)

    async def wait_terminal(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once terminal, or as it stands after `timeout_s`; None if it does not exist."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self.subscribe(job_id) as events:
            while True:
                job = await asyncio.to_thread(self.get, job_id)
                remaining = deadline - loop.time()
                if job is None or job.status.terminal or remaining <= 0:
                    return job
                await events.wait(remaining)

    @abc.abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:
        """Release connections (optional)."""

    async def aclose(self) -> None:
        """Release the event loop's connections (optional)."""
