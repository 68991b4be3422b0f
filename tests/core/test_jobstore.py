"""Job store semantics, run against the real Redis store and the memory store alike."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from core.contract import AdapterRecord, Job, JobError, JobKind, JobOutput, JobStatus, adapter_key
from core.jobstore import (
    IdempotencyConflict,
    InflightLimitExceeded,
    InvalidTransition,
    JobNotFound,
    JobStore,
    MemoryJobStore,
    RedisJobStore,
)
from core.jobstore.base import Admission, AdmissionOutcome, utcnow
from core.settings import LimitsSettings, Settings

MakeJob = Callable[..., Job]


@pytest.fixture
def new_job() -> MakeJob:
    def make(tenant: str = "acme", kind: JobKind = JobKind.generate) -> Job:
        return Job(
            id=uuid.uuid4().hex, kind=kind, status=JobStatus.queued, tenant=tenant, created_at=utcnow()
        )

    return make


def test_create_get_and_tenant_isolation(store: JobStore, new_job: MakeJob) -> None:
    job, created = store.create(new_job("acme"))
    assert created
    assert store.get(job.id) == job
    assert store.get_for_tenant("acme", job.id) == job
    assert store.get_for_tenant("other", job.id) is None
    assert store.get("missing") is None


def test_transitions_stamp_times_and_never_go_backwards(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())
    running = store.transition(job.id, JobStatus.running)
    assert running.started_at is not None and running.attempts == 1
    done = store.transition(
        job.id, JobStatus.succeeded, outputs=[JobOutput(index=0, key="k", seed=3)], seeds=[3]
    )
    assert done.finished_at is not None and done.outputs[0].key == "k" and done.seeds == [3]
    for status in (JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.canceled):
        with pytest.raises(InvalidTransition):
            store.transition(job.id, status)
    assert store.get(job.id).status is JobStatus.succeeded
    with pytest.raises(JobNotFound):
        store.transition("missing", JobStatus.running)
    with pytest.raises(ValueError):
        store.update(job.id, status=JobStatus.queued)


def test_requeue_counts_attempts_and_resets_progress(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())
    store.transition(job.id, JobStatus.running)
    store.set_progress(job.id, 5, 10, eta_s=1.5)
    assert store.get(job.id).progress.step == 5
    requeued = store.transition(job.id, JobStatus.queued)
    assert requeued.progress.step == 0 and requeued.started_at is None
    assert store.queue_position(job.id) == 0
    again = store.transition(job.id, JobStatus.running)
    assert again.attempts == 2
    failed = store.transition(job.id, JobStatus.failed, error=JobError(reason="boom", message="it broke"))
    assert failed.error.reason == "boom"


def test_update_keeps_status(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job(kind=JobKind.finetune))
    updated = store.update(job.id, adapter_id="ad-1", timings={"queued": 0.5})
    assert updated.adapter_id == "ad-1" and updated.timings == {"queued": 0.5}
    assert updated.status is JobStatus.queued


def test_idempotency_same_body_same_job_other_body_conflict(store: JobStore, new_job: MakeJob) -> None:
    first, created = store.create(new_job("acme"), idempotency_key="key-1", body_hash="h1")
    again, created_again = store.create(new_job("acme"), idempotency_key="key-1", body_hash="h1")
    assert created and not created_again and again.id == first.id
    assert store.find_idempotent("acme", "key-1", "h1").id == first.id
    with pytest.raises(IdempotencyConflict):
        store.create(new_job("acme"), idempotency_key="key-1", body_hash="h2")
    with pytest.raises(IdempotencyConflict):
        store.find_idempotent("acme", "key-1", "h2")
    # Keys are per tenant.
    other, created_other = store.create(new_job("globex"), idempotency_key="key-1", body_hash="h2")
    assert created_other and other.id != first.id
    assert store.find_idempotent("acme", "never-used", "h1") is None


def test_inflight_limit_is_atomic_and_freed_by_terminal_states(store: JobStore, new_job: MakeJob) -> None:
    results: list[str] = []

    def attempt() -> None:
        try:
            store.create(new_job("acme"), max_inflight=2)
            results.append("ok")
        except InflightLimitExceeded:
            results.append("limited")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == ["limited"] * 4 + ["ok"] * 2
    assert store.inflight_count("acme") == 2
    assert store.inflight_count("globex") == 0
    job_id = store.list_for_tenant("acme")[0][0].id
    store.transition(job_id, JobStatus.canceled)
    assert store.inflight_count("acme") == 1
    store.create(new_job("acme"), max_inflight=2)


def test_list_paginates_newest_first_per_tenant_and_kind(store: JobStore, new_job: MakeJob) -> None:
    created = [store.create(new_job("acme"))[0].id for _ in range(5)]
    store.create(new_job("acme", JobKind.finetune))
    store.create(new_job("globex"))
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = store.list_for_tenant("acme", kind=JobKind.generate, limit=2, cursor=cursor)
        assert len(page) <= 2
        seen += [job.id for job in page]
        if cursor is None:
            break
    assert seen == list(reversed(created))
    everything, last = store.list_for_tenant("acme", limit=50)
    assert len(everything) == 6 and last is None
    assert {job.tenant for job in everything} == {"acme"}
    assert [job.kind for job in store.list_for_tenant("acme", kind="finetune")[0]] == [JobKind.finetune]
    with pytest.raises(ValueError):
        store.list_for_tenant("acme", cursor="not-a-cursor")


def test_cancel_queued_at_once_running_by_flag(store: JobStore, new_job: MakeJob) -> None:
    queued, _ = store.create(new_job())
    store.mark_enqueued(queued)
    canceled = store.request_cancel(queued.id)
    assert canceled.status is JobStatus.canceled and store.queue_depth("generate") == 0
    running, _ = store.create(new_job())
    store.transition(running.id, JobStatus.running)
    assert not store.cancel_requested(running.id)
    flagged = store.request_cancel(running.id)
    assert flagged.status is JobStatus.running and flagged.cancel_requested
    assert store.cancel_requested(running.id)
    store.transition(running.id, JobStatus.canceled)
    assert store.request_cancel(running.id).status is JobStatus.canceled
    with pytest.raises(JobNotFound):
        store.request_cancel("missing")


def test_queue_positions_and_depth(store: JobStore, new_job: MakeJob) -> None:
    jobs = [store.create(new_job())[0] for _ in range(3)]
    for job in jobs:
        store.mark_enqueued(job)
        store.mark_enqueued(job)  # idempotent: a job holds one place
    finetune, _ = store.create(new_job(kind=JobKind.finetune))
    store.mark_enqueued(finetune)
    assert [store.queue_position(job.id) for job in jobs] == [0, 1, 2]
    assert store.queue_depth(JobKind.generate) == 3 and store.queue_depth("finetune") == 1
    store.transition(jobs[0].id, JobStatus.running)
    assert store.queue_position(jobs[0].id) is None
    assert [store.queue_position(job.id) for job in jobs[1:]] == [0, 1]
    store.mark_dequeued(jobs[1])
    assert store.queue_depth("generate") == 1


def test_leases_expire_and_only_the_owner_renews(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())
    store.transition(job.id, JobStatus.running)
    assert store.acquire_lease(job.id, "w1", 0.3)
    assert not store.acquire_lease(job.id, "w2", 0.3)
    assert store.renew_lease(job.id, "w1", 0.3)
    assert not store.renew_lease(job.id, "w2", 0.3)
    assert store.expired_leases() == []
    time.sleep(0.45)
    assert store.expired_leases() == [job.id]
    assert not store.renew_lease(job.id, "w1", 0.3)  # ran out: the job is the reaper's now
    assert store.acquire_lease(job.id, "w2", 5)
    store.release_lease(job.id, "w1")  # not the owner: no effect
    assert not store.acquire_lease(job.id, "w1", 5)
    store.release_lease(job.id, "w2")
    assert store.acquire_lease(job.id, "w1", 0.05)
    store.transition(job.id, JobStatus.succeeded)  # finishing voids the lease
    time.sleep(0.1)
    assert store.expired_leases() == []


def test_deliveries_and_dead_letters(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())
    assert [store.record_delivery(job.id) for _ in range(3)] == [1, 2, 3]
    store.transition(job.id, JobStatus.running)
    store.dead_letter(job.id, "killed its worker 3 times")
    parked = store.get(job.id)
    assert parked.status is JobStatus.failed and parked.error.reason == "dead_lettered"
    assert store.count_dead_letters() == 1
    (record,) = store.list_dead_letters()
    assert record.job_id == job.id and record.deliveries == 3 and record.tenant == "acme"
    assert record.kind is JobKind.generate and record.reason == "killed its worker 3 times"
    assert store.remove_dead_letter(job.id)
    assert not store.remove_dead_letter(job.id)
    assert store.list_dead_letters() == [] and store.count_dead_letters() == 0
    assert store.record_delivery(job.id) == 1  # the counter starts over after a replay


def test_rate_limit_allows_a_burst_then_asks_to_wait(store: JobStore, new_job: MakeJob) -> None:
    three = limits(rate_limit_per_minute=3)
    assert [admit(store, three, new_job()).outcome for _ in range(3)] == [AdmissionOutcome.created] * 3
    limited = admit(store, three, new_job())
    assert limited.outcome is AdmissionOutcome.rate_limited and 0 < limited.retry_after_s <= 20.0
    assert admit(store, three, new_job("globex")).outcome is AdmissionOutcome.created


def test_events_wake_a_subscriber(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())

    async def scenario() -> tuple[bool, bool, Job | None]:
        async with store.subscribe(job.id) as events:
            quiet = await events.wait(0.05)
            timer = threading.Timer(0.05, store.transition, args=(job.id, JobStatus.running))
            timer.start()
            woke = await events.wait(5.0)
            timer.join()
        finisher = threading.Timer(0.1, store.transition, args=(job.id, JobStatus.succeeded))
        finisher.start()
        final = await store.wait_terminal(job.id, 5.0)
        finisher.join()
        return quiet, woke, final

    quiet, woke, final = asyncio.run(scenario())
    assert not quiet and woke
    assert final is not None and final.status is JobStatus.succeeded


def test_wait_terminal_returns_current_state_after_timeout(store: JobStore, new_job: MakeJob) -> None:
    job, _ = store.create(new_job())
    current = asyncio.run(store.wait_terminal(job.id, 0.1))
    assert current.status is JobStatus.queued
    assert asyncio.run(store.wait_terminal("missing", 0.1)) is None


def adapter(adapter_id: str, created_at: str, tenant: str = "acme") -> AdapterRecord:
    return AdapterRecord(
        id=adapter_id,
        tenant=tenant,
        model="m",
        key=adapter_key(tenant, adapter_id),
        created_at=datetime.fromisoformat(created_at),
    )


def test_adapters_are_per_tenant(store: JobStore) -> None:
    store.put_adapter(adapter("a2", "2025-01-02T00:00:00+00:00"))
    store.put_adapter(adapter("a1", "2025-01-01T00:00:00+00:00"))
    assert store.get_adapter("acme", "a1") == adapter("a1", "2025-01-01T00:00:00+00:00")
    assert store.get_adapter("globex", "a1") is None
    assert [a.id for a in store.list_adapters("acme")] == ["a1", "a2"]
    assert store.list_adapters("globex") == []
    assert not store.delete_adapter("globex", "a1")
    assert store.delete_adapter("acme", "a1")
    assert store.get_adapter("acme", "a1") is None
    assert store.ping()


def test_redis_store_forgets_expired_jobs(redis_server, new_job: MakeJob) -> None:
    settings = Settings().override(
        redis_namespace=f"test-{uuid.uuid4().hex[:12]}", redis_url=redis_server.url()
    )
    redis_store = RedisJobStore(settings.redis, settings.limits)
    try:
        kept, _ = redis_store.create(new_job())
        gone, _ = redis_store.create(new_job())
        # As if its TTL ran out: the record is gone and its in-flight entry's expiry has passed.
        redis_store._redis.delete(f"{settings.redis.namespace}:job:{gone.id}")
        redis_store._redis.zadd(f"{settings.redis.namespace}:inflight:acme", {gone.id: 1})
        assert redis_store.inflight_count("acme") == 1
        assert redis_store.prune_inflight() == 1 and redis_store.inflight_count("acme") == 1
        assert [job.id for job in redis_store.list_for_tenant("acme")[0]] == [kept.id]
        assert redis_store._redis.ttl(f"{settings.redis.namespace}:job:{kept.id}") > 0
    finally:
        redis_store.flush_namespace()
        redis_store.close()


def test_redis_store_ping_fails_when_unreachable() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings().override(redis_url=f"redis://127.0.0.1:{port}/0")
    unreachable = RedisJobStore(settings.redis, settings.limits)
    assert unreachable.ping() is False


def admit(store: JobStore, limits: LimitsSettings, job: Job | None = None, **kwargs: object) -> Admission:
    tenant, kind = (job.tenant, job.kind) if job is not None else ("acme", JobKind.generate)
    return asyncio.run(store.admit(tenant, kind, limits, job, **kwargs))  # type: ignore[arg-type]


def limits(**values: int) -> LimitsSettings:
    return Settings().override(**values).limits


def test_admit_stores_indexes_and_queues_in_one_step(store: JobStore, new_job: MakeJob) -> None:
    first, second = new_job(), new_job()
    one = admit(store, limits(), first)
    two = admit(store, limits(), second)
    assert one.outcome is two.outcome is AdmissionOutcome.created
    assert one.job.queue_position == 0 and two.job.queue_position == 1 and two.queue_depth == 2
    assert store.get(first.id) == first and store.inflight_count("acme") == 2
    assert [job.id for job in store.list_for_tenant("acme")[0]] == [second.id, first.id]
    assert store.queue_position(second.id) == 1 and store.queue_depth(JobKind.generate) == 2
    fetched = asyncio.run(store.fetch(second.id))
    assert fetched.queue_position == 1 and fetched.model_copy(update={"queue_position": None}) == second
    store.transition(first.id, JobStatus.running)
    assert asyncio.run(store.fetch(first.id)).queue_position is None
    assert asyncio.run(store.fetch("missing")) is None


def test_admit_replays_an_idempotent_retry_and_refuses_another_body(
    store: JobStore, new_job: MakeJob
) -> None:
    tight = limits(rate_limit_per_minute=1)
    first = admit(store, tight, new_job(), idempotency_key="k", body_hash="h1")
    again = admit(store, tight, new_job(), idempotency_key="k", body_hash="h1")  # the budget is spent: still
    assert again.outcome is AdmissionOutcome.replayed and again.job.id == first.job.id
    assert again.job.queue_position == 0 and again.budget.remaining == 0
    with pytest.raises(IdempotencyConflict):
        admit(store, tight, new_job(), idempotency_key="k", body_hash="h2")
    other = admit(store, tight, new_job("globex"), idempotency_key="k", body_hash="h2")
    assert other.outcome is AdmissionOutcome.created  # keys are per tenant
    assert store.inflight_count("acme") == 1


def test_admit_checks_rate_then_inflight_then_queue_depth(store: JobStore, new_job: MakeJob) -> None:
    assert admit(store, limits(max_inflight_per_tenant=1), new_job()).outcome is AdmissionOutcome.created
    refused = admit(store, limits(max_inflight_per_tenant=1), new_job())
    assert refused.outcome is AdmissionOutcome.inflight_limited and refused.job is None
    assert refused.queue_depth is None  # refused before the queue was looked at
    full = admit(store, limits(max_queue_depth=1), new_job("globex"))
    assert full.outcome is AdmissionOutcome.queue_full and full.queue_depth == 1
    assert store.inflight_count("acme") == 1 and store.inflight_count("globex") == 0
    assert store.queue_depth(JobKind.generate) == 1


def test_only_admitted_jobs_spend_the_rate_budget(store: JobStore, new_job: MakeJob) -> None:
    """A client obeying Retry-After on an in-flight refusal is not rate-limited for having asked."""
    tight = limits(rate_limit_per_minute=2, max_inflight_per_tenant=1)
    first = admit(store, tight, new_job())
    assert first.outcome is AdmissionOutcome.created
    assert (first.budget.limit, first.budget.remaining) == (2, 1) and 0 < first.budget.reset_s <= 30
    for _ in range(5):
        refused = admit(store, tight, new_job())
        assert refused.outcome is AdmissionOutcome.inflight_limited and refused.budget.remaining == 1
        assert admit(store, tight).outcome is AdmissionOutcome.inflight_limited  # a check: counts nothing
    store.transition(first.job.id, JobStatus.canceled)
    assert admit(store, tight).outcome is AdmissionOutcome.admissible
    second = admit(store, tight, new_job())
    assert second.outcome is AdmissionOutcome.created and second.budget.remaining == 0
    store.transition(second.job.id, JobStatus.canceled)
    limited = admit(store, tight, new_job())
    assert limited.outcome is AdmissionOutcome.rate_limited and limited.budget.remaining == 0
    assert 0 < limited.retry_after_s <= 30.0 and store.inflight_count("acme") == 0
    assert admit(store, tight, new_job("globex")).outcome is AdmissionOutcome.created


def test_expired_inflight_entries_never_count_and_are_pruned(store: JobStore, new_job: MakeJob) -> None:
    job = admit(store, limits(max_inflight_per_tenant=1), new_job()).job
    if isinstance(store, MemoryJobStore):  # as if the record's TTL ran out unfinished
        store._inflight["acme"][job.id] = time.monotonic() - 1
    else:
        store._redis.zadd(f"{store._ns}:inflight:acme", {job.id: 1})
    assert store.inflight_count("acme") == 0
    assert admit(store, limits(max_inflight_per_tenant=1), new_job()).outcome is AdmissionOutcome.created
    assert store.prune_inflight() == 1 and store.prune_inflight() == 0
    assert store.inflight_count("acme") == 1


def test_start_deadlines_are_indexed_by_admission_and_create(store: JobStore, new_job: MakeJob) -> None:
    """Jobs with a `start_deadline_s` are indexed by when it passes (admitted in one step, or created);
    the sweep sees only those past due, earliest first, and forgets what it looked at."""

    def with_deadline(deadline_s: float, created_s_ago: float) -> Job:
        job = new_job()
        created = utcnow() - timedelta(seconds=created_s_ago)
        return job.model_copy(update={"created_at": created, "request": {"start_deadline_s": deadline_s}})

    later, sooner = with_deadline(1, created_s_ago=5), with_deadline(1, created_s_ago=10)
    not_yet, without = with_deadline(3600, created_s_ago=5), new_job()
    assert admit(store, limits(), later).outcome is AdmissionOutcome.created
    assert admit(store, limits(), not_yet).outcome is AdmissionOutcome.created
    store.create(sooner)
    store.create(without)
    assert store.due_start_deadlines() == [sooner.id, later.id]
    assert store.due_start_deadlines(limit=1) == [sooner.id]
    store.forget_start_deadlines([sooner.id, later.id])
    assert store.due_start_deadlines() == []
