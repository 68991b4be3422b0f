"""The job store in Redis: one JSON document per job, changed in WATCH/MULTI transactions.

Keys (all under `settings.redis.namespace`): `job:<id>` (JSON, expires after job_ttl_s),
`idem:<tenant>:<digest>`, `inflight:<tenant>` (sorted by record expiry, ms: expired members never count and
the reaper prunes them), `tjobs:<tenant>:<all|kind>` (sorted by creation),
`queue:<kind>` (sorted by enqueue order), `cancel:<id>`, `leases` (sorted by expiry, ms) + `lease_owner`
(hash), `deliveries:<id>`, `dead` (hash of `DeadLetter` JSON), `rate:<tenant>`, `adapters:<tenant>` (hash of
`AdapterRecord` JSON), and the pub/sub channel `events:<id>`. Times for leases and rates come from the Redis
server's clock, so gateways and workers on different hosts agree.

`_RedisBackend` holds the connection and the key layout; each role class works on its own keys, and
`RedisJobStore` composes them. The gateway's hot path (`admit`, `fetch`) runs on an asyncio client bound to
the running event loop; everything else is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

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
    RateBudget,
    WatermarkIndex,
    WebhookSecretBook,
    key_digest,
    kind_value,
    list_score,
    parse_cursor,
    sort_adapters,
    sort_dead_letters,
)
from core.jobstore.redis_scripts import ACQUIRE_LEASE, ADMIT, FETCH, RELEASE_LEASE, RENEW_LEASE
from core.redis_async import bounded, loop_client
from core.settings import LimitsSettings, RedisSettings

_KINDS = tuple(JobKind)
COMMAND_TIMEOUT_S = (
    10.0  # the longest a call may wait for Redis (sync: per socket operation; async: per call)
)


class _RedisBackend:
    """One Redis connection, the namespace's key layout and record lifetimes (`limits`)."""

    def __init__(self, redis_settings: RedisSettings, limits: LimitsSettings) -> None:
        self.redis_settings, self.limits = redis_settings, limits
        self._ns = redis_settings.namespace
        self._redis = redis.Redis.from_url(
            redis_settings.url,
            decode_responses=True,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self._acquire = self._redis.register_script(ACQUIRE_LEASE)
        self._renew = self._redis.register_script(RENEW_LEASE)
        self._release = self._redis.register_script(RELEASE_LEASE)
        # The gateway's asyncio clients, one per event loop, with the admission and fetch scripts registered.
        self._loop_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[aioredis.Redis, Any, Any]
        ]
        self._loop_clients = weakref.WeakKeyDictionary()
        self._queue_keys = [self._k("queue", kind.value) for kind in _KINDS]  # FETCH looks for a job in each

    def _k(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def _job_key(self, job_id: str) -> str:
        return self._k("job", job_id)

    def _load(self, job_id: str) -> Job | None:
        raw = self._redis.get(self._job_key(job_id))
        return Job.from_record(raw) if raw is not None else None

    def _lease_keys(self) -> list[str]:
        return [self._k("leases"), self._k("lease_owner")]

    def _inflight_deadline_ms(self) -> int:
        """An in-flight member's score: when its record expires (as `job_ttl_s` from now)."""
        return int(time.time() * 1000) + self.limits.job_ttl_s * 1000


class RedisJobRecords(_RedisBackend, JobRecords):
    def create(
        self,
        job: Job,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
        max_inflight: int | None = None,
    ) -> tuple[Job, bool]:
        seq = int(self._redis.incr(self._k("seq")))
        created_ms = int(job.created_at.timestamp() * 1000)
        score = list_score(created_ms, seq)
        ttl_s = self.limits.job_ttl_s
        inflight_key = self._k("inflight", job.tenant)
        idem_key = self._k("idem", job.tenant, key_digest(idempotency_key)) if idempotency_key else None
        watches = [inflight_key] + ([idem_key] if idem_key else [])

        def txn(pipe: redis.client.Pipeline) -> tuple[Job, bool]:
            if idem_key:
                existing = self._idempotent_job(pipe, idem_key, body_hash)
                if existing is not None:
                    return existing, False
            live = pipe.zcount(inflight_key, int(time.time() * 1000), "+inf")
            if max_inflight is not None and live >= max_inflight:
                raise InflightLimitExceeded(job.tenant, max_inflight)
            pipe.multi()
            pipe.set(self._job_key(job.id), job.model_dump_json(), ex=ttl_s)
            if not job.status.terminal:
                pipe.zadd(inflight_key, {job.id: self._inflight_deadline_ms()})
            for index in ("all", job.kind.value):
                index_key = self._k("tjobs", job.tenant, index)
                pipe.zadd(index_key, {job.id: score})
                # Entries older than any job can be are dropped here, so the index stays bounded.
                pipe.zremrangebyscore(index_key, "-inf", list_score(created_ms - ttl_s * 1000, 0))
            if (deadline_at := start_deadline_at(job)) is not None:
                pipe.zadd(self._k("start-deadlines"), {job.id: int(deadline_at.timestamp() * 1000)})
            if idem_key:
                record = json.dumps({"job_id": job.id, "body_hash": body_hash})
                pipe.set(idem_key, record, ex=self.limits.idempotency_ttl_s)
            return job, True

        return self._redis.transaction(txn, *watches, value_from_callable=True)

    def _idempotent_job(self, client: Any, idem_key: str, body_hash: str | None) -> Job | None:
        raw = client.get(idem_key)
        if raw is None:
            return None
        record = json.loads(raw)
        job_raw = client.get(self._job_key(record["job_id"]))
        if job_raw is None:  # the job expired before its key: the key is free again
            return None
        if record.get("body_hash") != body_hash:
            raise IdempotencyConflict(record["job_id"])
        return Job.from_record(job_raw)

    def find_idempotent(self, tenant: str, idempotency_key: str, body_hash: str) -> Job | None:
        return self._idempotent_job(
            self._redis, self._k("idem", tenant, key_digest(idempotency_key)), body_hash
        )

    def get(self, job_id: str) -> Job | None:
        return self._load(job_id)

    def list_for_tenant(
        self, tenant: str, kind: JobKind | str | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        index_key = self._k("tjobs", tenant, kind_value(kind) if kind else "all")
        start = parse_cursor(cursor)
        upper: str = f"({start}" if start is not None else "+inf"
        found: list[tuple[Job, int]] = []
        for _ in range(10):  # bounded: each round only skips expired entries
            want = limit + 1 - len(found)
            entries = self._redis.zrevrangebyscore(
                index_key, upper, "-inf", start=0, num=want, withscores=True
            )
            if not entries:
                break
            raws = self._redis.mget([self._job_key(job_id) for job_id, _ in entries])
            stale = [job_id for (job_id, _), raw in zip(entries, raws, strict=True) if raw is None]
            if stale:
                self._redis.zrem(index_key, *stale)
            found += [
                (Job.from_record(raw), int(score))
                for (_, score), raw in zip(entries, raws, strict=True)
                if raw is not None
            ]
            upper = f"({int(entries[-1][1])}"
            if len(found) > limit or len(entries) < want:
                break
        page = found[:limit]
        next_cursor = str(page[-1][1]) if len(found) > limit else None
        return [job for job, _ in page], next_cursor

    def delete_finished(self, job: Job) -> None:
        if not job.status.terminal:
            raise ValueError(f"job {job.id} is {job.status.value}; only finished jobs are deleted")
        pipe = self._redis.pipeline()
        pipe.delete(self._job_key(job.id), self._k("deliveries", job.id))
        for index in ("all", job.kind.value):
            pipe.zrem(self._k("tjobs", job.tenant, index), job.id)
        pipe.execute()

    def inflight_count(self, tenant: str) -> int:
        # Members whose record expired without finishing do not count (they must not block the tenant).
        return int(self._redis.zcount(self._k("inflight", tenant), int(time.time() * 1000), "+inf"))

    def prune_inflight(self) -> int:
        now_ms = int(time.time() * 1000)
        pruned = 0
        for key in self._redis.scan_iter(match=self._k("inflight", "*"), count=500):
            pruned += int(self._redis.zremrangebyscore(key, "-inf", f"({now_ms}"))
        return pruned

    def _mutate(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        key = self._job_key(job_id)

        def txn(pipe: redis.client.Pipeline) -> Job:
            raw = pipe.get(key)
            if raw is None:
                raise JobNotFound(job_id)
            old = Job.from_record(raw)
            new = change(old)
            pipe.multi()
            pipe.set(key, new.model_dump_json(), ex=self.limits.job_ttl_s)
            if not new.status.terminal:  # the record lives longer: so does its in-flight membership
                pipe.zadd(self._k("inflight", new.tenant), {job_id: self._inflight_deadline_ms()}, xx=True)
            if new.status is not old.status:
                self._status_side_effects(pipe, new)
            pipe.publish(self._k("events", job_id), new.status.value)
            return new

        return self._redis.transaction(txn, key, value_from_callable=True)

    def _status_side_effects(self, pipe: redis.client.Pipeline, job: Job) -> None:
        queue_key = self._k("queue", job.kind.value)
        if job.status is JobStatus.queued:
            pipe.zadd(queue_key, {job.id: int(self._redis.incr(self._k("seq")))}, nx=True)
        else:
            pipe.zrem(queue_key, job.id)
        if job.status is not JobStatus.running:  # queued again or finished: the old lease is void
            pipe.zrem(self._k("leases"), job.id)
            pipe.hdel(self._k("lease_owner"), job.id)
        if job.status.terminal:
            pipe.zrem(self._k("inflight", job.tenant), job.id)
            pipe.delete(self._k("cancel", job.id))

    def _set_cancel_flag(self, job_id: str) -> None:
        self._redis.set(self._k("cancel", job_id), "1", ex=self.limits.job_ttl_s)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._redis.exists(self._k("cancel", job_id)))

    def mark_enqueued(self, job: Job) -> None:
        seq = int(self._redis.incr(self._k("seq")))
        self._redis.zadd(self._k("queue", job.kind.value), {job.id: seq}, nx=True)

    def mark_dequeued(self, job: Job) -> None:
        self._redis.zrem(self._k("queue", job.kind.value), job.id)

    def queue_position(self, job_id: str) -> int | None:
        job = self.get(job_id)
        if job is None or job.status is not JobStatus.queued:
            return None
        rank = self._redis.zrank(self._k("queue", job.kind.value), job_id)
        return int(rank) if rank is not None else None

    def queue_depth(self, kind: JobKind | str) -> int:
        return int(self._redis.zcard(self._k("queue", kind_value(kind))))


class RedisLeaseBook(_RedisBackend, LeaseBook):
    def acquire_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        return bool(self._acquire(keys=self._lease_keys(), args=[job_id, worker_id, int(lease_s * 1000)]))

    def renew_lease(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        return bool(self._renew(keys=self._lease_keys(), args=[job_id, worker_id, int(lease_s * 1000)]))

    def release_lease(self, job_id: str, worker_id: str) -> None:
        self._release(keys=self._lease_keys(), args=[job_id, worker_id])

    def due_start_deadlines(self, limit: int = 500) -> list[str]:
        seconds, micros = self._redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        return list(self._redis.zrangebyscore(self._k("start-deadlines"), "-inf", now, start=0, num=limit))

    def forget_start_deadlines(self, job_ids: list[str]) -> None:
        if job_ids:
            self._redis.zrem(self._k("start-deadlines"), *job_ids)

    def expired_leases(self) -> list[str]:
        seconds, micros = self._redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        candidates = self._redis.zrangebyscore(self._k("leases"), "-inf", now)
        expired = []
        for job_id in candidates:
            job = self._load(job_id)
            if job is not None and job.status is JobStatus.running:
                expired.append(job_id)
            else:  # a lease left behind by a job that is no longer running
                self._redis.zrem(self._k("leases"), job_id)
                self._redis.hdel(self._k("lease_owner"), job_id)
        return expired

    def record_delivery(self, job_id: str) -> int:
        key = self._k("deliveries", job_id)
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, self.limits.job_ttl_s)
        return int(pipe.execute()[0])

    def deliveries(self, job_id: str) -> int:
        return int(self._redis.get(self._k("deliveries", job_id)) or 0)

    def add_dead_letter(self, record: DeadLetter) -> None:
        self._redis.hset(self._k("dead"), record.job_id, record.model_dump_json())

    def list_dead_letters(self) -> list[DeadLetter]:
        return sort_dead_letters(
            DeadLetter.model_validate_json(raw) for raw in self._redis.hvals(self._k("dead"))
        )

    def count_dead_letters(self) -> int:
        return int(self._redis.hlen(self._k("dead")))

    def remove_dead_letter(self, job_id: str) -> bool:
        removed = bool(self._redis.hdel(self._k("dead"), job_id))
        self._redis.delete(self._k("deliveries", job_id))
        return removed


class RedisAdapterRegistry(_RedisBackend, AdapterRegistry):
    def put_adapter(self, record: AdapterRecord) -> None:
        self._redis.hset(self._k("adapters", record.tenant), record.id, record.model_dump_json())

    def get_adapter(self, tenant: str, adapter_id: str) -> AdapterRecord | None:
        raw = self._redis.hget(self._k("adapters", tenant), adapter_id)
        return AdapterRecord.model_validate_json(raw) if raw is not None else None

    def list_adapters(self, tenant: str) -> list[AdapterRecord]:
        return sort_adapters(
            AdapterRecord.model_validate_json(raw) for raw in self._redis.hvals(self._k("adapters", tenant))
        )

    def delete_adapter(self, tenant: str, adapter_id: str) -> bool:
        return bool(self._redis.hdel(self._k("adapters", tenant), adapter_id))


class RedisWebhookSecretBook(_RedisBackend, WebhookSecretBook):
    def get_webhook_secrets(self, tenant: str) -> WebhookSecretRecord | None:
        raw = self._redis.hget(self._k("webhook-secrets"), tenant)
        return WebhookSecretRecord.model_validate_json(raw) if raw is not None else None

    def put_webhook_secrets(self, tenant: str, record: WebhookSecretRecord) -> None:
        self._redis.hset(self._k("webhook-secrets"), tenant, record.model_dump_json())

    def update_webhook_secrets(
        self, tenant: str, change: Callable[[WebhookSecretRecord | None], WebhookSecretRecord]
    ) -> WebhookSecretRecord:
        key = self._k("webhook-secrets")

        def txn(pipe: redis.client.Pipeline) -> WebhookSecretRecord:
            raw = pipe.hget(key, tenant)
            new = change(WebhookSecretRecord.model_validate_json(raw) if raw is not None else None)
            pipe.multi()
            pipe.hset(key, tenant, new.model_dump_json())
            return new

        return self._redis.transaction(txn, key, value_from_callable=True)


class RedisWatermarkIndex(_RedisBackend, WatermarkIndex):
    """`wm:<tenant>:<payload>` → `job id:index`, expiring with the job record."""

    def put_watermark(self, tenant: str, payload: str, job_id: str, index: int) -> None:
        self._redis.set(self._k("wm", tenant, payload), f"{job_id}:{index}", ex=self.limits.job_ttl_s)

    def find_watermark(self, tenant: str, payload: str) -> tuple[str, int] | None:
        raw = self._redis.get(self._k("wm", tenant, payload))
        if raw is None:
            return None
        job_id, _, index = (raw.decode() if isinstance(raw, bytes) else raw).rpartition(":")
        return job_id, int(index)


class RedisJobEventBus(_RedisBackend, JobEventBus):
    def subscribe(self, job_id: str) -> JobEvents:
        return _RedisJobEvents(self.redis_settings.url, self._k("events", job_id))


class RedisJobStore(
    RedisJobRecords,
    RedisLeaseBook,
    RedisAdapterRegistry,
    RedisWebhookSecretBook,
    RedisWatermarkIndex,
    RedisJobEventBus,
    JobStore,
):
    async def _async(self) -> tuple[aioredis.Redis, Any, Any]:
        """The asyncio client of the running loop (a gateway process has one loop; tests may run several)."""
        loop = asyncio.get_running_loop()
        entry = self._loop_clients.get(loop)
        if entry is None:
            client = loop_client(self.redis_settings.url, decode_responses=True)
            entry = self._loop_clients[loop] = (
                client,
                client.register_script(ADMIT),
                client.register_script(FETCH),
            )
            # Both scripts in one round trip now, rather than a NOSCRIPT and a SCRIPT LOAD on each one's first
            # call. Not loaded (Redis unreachable, or flushed later): the scripts load themselves when called.
            pipe = client.pipeline(transaction=False)
            pipe.script_load(ADMIT)
            pipe.script_load(FETCH)
            with contextlib.suppress(redis.RedisError):
                await bounded(pipe.execute(), COMMAND_TIMEOUT_S)
        return entry

    async def admit(
        self,
        tenant: str,
        kind: JobKind,
        limits: LimitsSettings,
        job: Job | None = None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> Admission:
        _, script, _ = await self._async()
        idem_key = (
            self._k("idem", tenant, key_digest(idempotency_key)) if idempotency_key else self._k("idem")
        )
        job_id = job.id if job is not None else ""
        keys = [
            idem_key,
            self._k("inflight", tenant),
            self._k("rate", tenant),
            self._k("queue", kind.value),
            self._job_key(job_id),
            self._k("tjobs", tenant, "all"),
            self._k("tjobs", tenant, kind.value),
            self._k("seq"),
            self._k("start-deadlines"),
        ]
        deadline_at = start_deadline_at(job) if job is not None else None
        args = [
            job_id,
            job.model_dump_json() if job is not None else "",
            body_hash or "",
            "1" if idempotency_key else "0",
            limits.rate_limit_per_minute,
            limits.max_inflight_per_tenant,
            limits.max_queue_depth,
            limits.job_ttl_s,
            limits.idempotency_ttl_s,
            int(job.created_at.timestamp() * 1000) if job is not None else 0,
            self._ns,
            int(deadline_at.timestamp() * 1000) if deadline_at is not None else "",
        ]
        outcome, remaining, reset_s, detail, *rest = await bounded(
            script(keys=keys, args=args), COMMAND_TIMEOUT_S
        )
        if outcome == "conflict":
            raise IdempotencyConflict(detail)
        budget = RateBudget(limits.rate_limit_per_minute, int(remaining), float(reset_s))
        result = AdmissionOutcome(outcome)
        if result is AdmissionOutcome.replayed:
            position = int(rest[0])
            replayed = Job.from_record(detail)
            if position >= 0:
                replayed = replayed.model_copy(update={"queue_position": position})
            return Admission(result, budget, job=replayed)
        if result is AdmissionOutcome.created:
            assert job is not None
            created = job.model_copy(update={"queue_position": int(detail)})
            return Admission(result, budget, job=created, queue_depth=int(detail) + 1)
        if result is AdmissionOutcome.rate_limited:
            return Admission(result, budget, retry_after_s=float(detail))
        if result is AdmissionOutcome.inflight_limited:  # refused before the queue was looked at
            return Admission(result, budget)
        return Admission(result, budget, queue_depth=int(detail))

    async def fetch(self, job_id: str) -> Job | None:
        _, _, script = await self._async()
        # A job's kind is inside its record: the script looks for it in each queue (`_KINDS` order: generate first).
        found = await bounded(
            script(keys=[self._job_key(job_id), *self._queue_keys], args=[job_id]), COMMAND_TIMEOUT_S
        )
        if found is None:
            return None
        raw, *rank = found
        job = Job.from_record(raw)
        if job.status is JobStatus.queued:
            job = job.model_copy(update={"queue_position": int(rank[0]) if rank else None})
        return job

    async def aclose(self) -> None:
        entry = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()

    def flush_namespace(self) -> int:
        """Delete every key of this namespace (tests and `fae` admin tooling); returns how many."""
        deleted = 0
        for batch in _batched(self._redis.scan_iter(match=f"{self._ns}:*", count=500), 500):
            deleted += int(self._redis.delete(*batch))
        return deleted


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _RedisJobEvents(JobEvents):
    """Pub/sub on the job's channel with its own async connection (one per open stream)."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self._redis_url, self._channel = redis_url, channel
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None

    async def __aenter__(self) -> _RedisJobEvents:
        self._client = aioredis.Redis.from_url(self._redis_url, socket_connect_timeout=5)
        self._pubsub = self._client.pubsub()
        await self._pubsub.subscribe(self._channel)
        # Wait for the server's confirmation: only then is no later change missed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while loop.time() < deadline:
            message = await self._pubsub.get_message(timeout=deadline - loop.time())
            if message is not None and message.get("type") == "subscribe":
                break
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def wait(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None:
                while await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0):
                    pass  # several changes collapse into one re-read
                return True
