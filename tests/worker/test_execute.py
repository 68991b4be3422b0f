"""Job delivery by kind, the reaper and the embedded runner on the memory job store and local storage (no servers)."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from core.contract import Job, JobKind, JobStatus, adapter_key, checkpoints_key, dataset_key
from core.jobstore import JobStore, MemoryJobStore
from core.jobstore.base import utcnow
from core.settings import Settings
from core.storage import LocalStorage
from core.webhooks import secret_for_tenant, verify
from worker.embedded_queue import InProcessJobQueue
from worker.engine import Engine, EngineHooks
from worker.jobs import execute_job
from worker.jobs.common import JobContext, ProgressWriter, Throttled, make_worker_id
from worker.leases import reap_once

Submit = Callable[[JobStore, Job], Job]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().override(
        data_dir=tmp_path,
        lease_s=5,
        heartbeat_s=0.2,
        max_deliveries=2,
        progress_interval_s=0,
        cancel_poll_s=0,
    )


@pytest.fixture
def store(settings: Settings) -> MemoryJobStore:
    return MemoryJobStore(settings.limits)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def execute(
    job_id: str,
    store: JobStore,
    storage: LocalStorage,
    engine: Engine,
    settings: Settings,
    on_terminal: Callable[[Job], None] | None = None,
) -> Job | None:
    """One delivery, as a fresh worker makes it."""
    return execute_job(job_id, JobContext(store, storage, engine, settings, make_worker_id(), on_terminal))


def wait_for(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
def test_generate_job_succeeds_with_outputs_in_storage(
    fmt: str, pil_format: str, store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    job = submit(store, generate_job(n=2, steps=3, seed=40, output_format=fmt))
    terminal: list[Job] = []
    final = execute(job.id, store, storage, engine, settings, on_terminal=terminal.append)
    assert final is not None and final.status is JobStatus.succeeded, final
    assert terminal == [final]
    assert final.seeds == [40, 41] and final.attempts == 1 and final.model == "tiny"
    assert final.progress.step == final.progress.total == 3
    assert set(final.timings) == {"queued", "denoise", "decode", "provenance", "upload", "total"}
    assert final.provenance is not None and final.provenance.c2pa and not final.provenance.watermark  # 32 px
    assert [o.key for o in final.outputs] == [f"tenants/acme/jobs/{job.id}/{i}.{fmt}" for i in range(2)]
    for output in final.outputs:
        image = Image.open(io.BytesIO(storage.get_bytes(output.key)))
        assert image.format == pil_format and image.size == (32, 32)
    assert store.queue_depth(JobKind.generate) == 0


def test_bad_input_fails_with_an_actionable_reason(
    store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    out_of_range = submit(store, generate_job(class_label=99))
    final = execute(out_of_range.id, store, storage, engine, settings)
    assert final.status is JobStatus.failed and final.error.reason == "invalid_input"
    assert "class label 99 is out of range" in final.error.message
    unknown_model = submit(store, generate_job(model="nope"))
    final = execute(unknown_model.id, store, storage, engine, settings)
    assert final.error.reason == "invalid_input" and "unknown model 'nope'" in final.error.message
    unknown_adapter = submit(store, generate_job(adapter="ghost"))
    final = execute(unknown_adapter.id, store, storage, engine, settings)
    assert final.error.reason == "invalid_input" and "adapter 'ghost' does not exist" in final.error.message
    assert storage.list("tenants/") == []


def test_terminal_unknown_and_leased_deliveries_are_dropped(
    store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    assert execute("no-such-job", store, storage, engine, settings) is None
    canceled = submit(store, generate_job())
    store.request_cancel(canceled.id)  # queued: canceled at once by the gateway
    assert execute(canceled.id, store, storage, engine, settings) is None
    assert store.get(canceled.id).status is JobStatus.canceled
    assert store.get(canceled.id).attempts == 0  # skipped, never ran
    leased = submit(store, generate_job())
    assert store.acquire_lease(leased.id, "other-worker", 30)
    assert execute(leased.id, store, storage, engine, settings) is None
    assert store.get(leased.id).status is JobStatus.queued
    assert store.record_delivery(leased.id) == 1  # the dropped delivery was not counted
    assert storage.list("tenants/") == []


def test_cancel_a_running_job_between_steps(
    store: JobStore, storage: LocalStorage, tiny_pipeline: Any, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    engine = Engine({"tiny": tiny_pipeline}, hooks=EngineHooks(step_delay_s=0.01))
    job = submit(store, generate_job(steps=250))
    result: list[Job] = []
    thread = threading.Thread(target=lambda: result.append(execute(job.id, store, storage, engine, settings)))
    thread.start()
    wait_for(lambda: store.get(job.id).progress.step >= 2, what="the job to take steps")
    running = REGISTRY.get_sample_value("fae_jobs_running", {"queue": "generate"})
    assert running == 1  # what autoscaling adds to the queue's length: the job is off the Celery list now
    store.request_cancel(job.id)
    thread.join(30)
    engine.close()
    final = result[0]
    assert final.status is JobStatus.canceled and final.error.reason == "canceled"
    assert REGISTRY.get_sample_value("fae_jobs_running", {"queue": "generate"}) == 0
    assert 2 <= final.progress.step < 250 and final.outputs == []
    assert storage.list("tenants/") == []


def test_delivery_past_the_limit_is_dead_lettered(
    store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    job = submit(store, generate_job())
    for _ in range(settings.worker.max_deliveries):  # earlier deliveries that died before finishing
        store.record_delivery(job.id)
    terminal: list[Job] = []
    final = execute(job.id, store, storage, engine, settings, on_terminal=terminal.append)
    assert final.status is JobStatus.failed and final.error.reason == "dead_lettered"
    assert "delivered 3 times" in final.error.message and terminal == [final]
    assert [(d.job_id, d.deliveries) for d in store.list_dead_letters()] == [(job.id, 3)]
    assert storage.list("tenants/") == []


def test_reaper_requeues_then_dead_letters_jobs_whose_lease_ran_out(
    store: JobStore, settings: Settings, generate_job: Callable[..., Job], submit: Submit
) -> None:
    settings = settings.override(lease_s=0.05, heartbeat_s=0.01)
    job = submit(store, generate_job())
    requeued: list[Job] = []
    terminal: list[Job] = []

    def start_and_die() -> None:  # what a worker that gets SIGKILLed leaves behind
        assert store.acquire_lease(job.id, f"worker-{uuid.uuid4().hex[:4]}", settings.worker.lease_s)
        deliveries = store.record_delivery(job.id)
        store.transition(job.id, JobStatus.running, attempts=deliveries)
        time.sleep(0.1)

    start_and_die()
    report = reap_once(store, settings.worker, requeued.append, terminal.append)
    assert report.requeued == [job.id] and [j.status for j in requeued] == [JobStatus.queued]
    assert store.get(job.id).status is JobStatus.queued and store.queue_depth(JobKind.generate) == 1
    start_and_die()
    report = reap_once(store, settings.worker, requeued.append, terminal.append)
    assert report.dead_lettered == [job.id] and len(requeued) == 1
    final = store.get(job.id)
    assert final.status is JobStatus.failed and final.error.reason == "dead_lettered"
    assert terminal == [final]
    assert reap_once(store, settings.worker, requeued.append).requeued == []  # nothing left to reap


def test_live_lease_is_not_reaped(
    store: JobStore, settings: Settings, generate_job: Callable[..., Job], submit: Submit
) -> None:
    job = submit(store, generate_job())
    store.acquire_lease(job.id, "alive", 30)
    store.transition(job.id, JobStatus.running)
    assert reap_once(store, settings.worker, lambda j: None).requeued == []
    assert store.get(job.id).status is JobStatus.running


def finetune_job(**request: Any) -> Job:
    return Job(
        id=uuid.uuid4().hex, kind=JobKind.finetune, status=JobStatus.queued, tenant="acme",
        request={"steps": 3, "rank": 2, "learning_rate": 0.05, **request}, created_at=utcnow(),
    )  # fmt: skip


@pytest.fixture
def trained_like_engine() -> Iterator[Engine]:
    """A tiny model whose zero-initialised gates (adaLN-zero) are filled in, as training would: at a fresh
    init the blocks do not reach the output, so no adapter on them could change an image."""
    import torch

    from model import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny", seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in pipe.generator.parameters():
            if not param.any():
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    engine = Engine({"tiny": pipe})
    try:
        yield engine
    finally:
        engine.close()


def test_finetune_job_trains_an_adapter_that_generate_uses(
    store: JobStore, storage: LocalStorage, trained_like_engine: Engine, settings: Settings,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    engine = trained_like_engine
    rng = np.random.default_rng(0)
    job = finetune_job(name="brand")
    for i in range(10):  # the gateway's upload of the dataset
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
        storage.put_bytes(f"{dataset_key('acme', job.id)}img{i}.png", buffer.getvalue(), "image/png")
    store.create(job)
    final = execute(job.id, store, storage, engine, settings)
    assert final.status is JobStatus.succeeded, final.error
    assert final.adapter_id == job.id and final.progress.step == final.progress.total == 3
    assert final.progress.loss is not None
    record = store.get_adapter("acme", job.id)
    assert record.key == adapter_key("acme", job.id) and record.model == "tiny" and record.name == "brand"
    assert storage.list(record.key)  # the adapter files are in storage
    assert store.get_adapter("other-tenant", job.id) is None
    assert storage.list(dataset_key("acme", job.id))  # kept (until its adapter goes, or retention)
    assert storage.list(checkpoints_key("acme", job.id)) == []  # the mirror is cleared once it succeeded

    plain = execute(submit(store, generate_job(seed=3, steps=3)).id, store, storage, engine, settings)
    tuned = submit(store, generate_job(seed=3, steps=3, adapter=job.id))
    tuned = execute(tuned.id, store, storage, engine, settings)
    assert tuned.status is JobStatus.succeeded, tuned.error

    # Pixels, not bytes: each file's Content Credentials name its own job.
    def pixels(output_job: Job) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(storage.get_bytes(output_job.outputs[0].key))))

    assert not np.array_equal(pixels(tuned), pixels(plain))
    again = execute(submit(store, generate_job(seed=3, steps=3)).id, store, storage, engine, settings)
    assert np.array_equal(pixels(again), pixels(plain))  # unloaded


def test_a_finetunes_dataset_can_go_once_it_succeeded(
    store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings
) -> None:
    job = finetune_job(steps=1)
    for i in range(10):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(buffer, format="PNG")
        storage.put_bytes(f"{dataset_key('acme', job.id)}img{i}.png", buffer.getvalue(), "image/png")
    store.create(job)
    final = execute(job.id, store, storage, engine, settings.override(delete_dataset_after_training=True))
    assert final.status is JobStatus.succeeded, final.error
    assert storage.list(dataset_key("acme", job.id)) == [] and storage.list(adapter_key("acme", job.id))


def test_finetune_with_an_empty_dataset_fails_with_invalid_input(
    store: JobStore, storage: LocalStorage, engine: Engine, settings: Settings
) -> None:
    job = finetune_job()
    store.create(job)
    final = execute(job.id, store, storage, engine, settings)
    assert final.status is JobStatus.failed and final.error.reason == "invalid_input"
    assert "is empty" in final.error.message


def test_progress_writes_are_throttled_but_the_last_step_is_kept(
    store: JobStore, generate_job: Callable[..., Job], submit: Submit
) -> None:
    job = submit(store, generate_job())
    writer = ProgressWriter(store, job.id, interval_s=60)
    for step in range(1, 11):
        writer(step, 10, 1.0)
        if step == 5:
            assert store.get(job.id).progress.step == 1  # only the first write went through
    assert store.get(job.id).progress.step == 10


def test_throttled_cancel_poll() -> None:
    calls: list[int] = []
    poll = Throttled(lambda: calls.append(1) or len(calls) > 1, interval_s=60)
    assert poll() is False and poll() is False and calls == [1]


def test_embedded_runner_runs_jobs_and_retries_webhooks(
    store: JobStore, storage: LocalStorage, settings: Settings, tiny_model_dir: Path,
    generate_job: Callable[..., Job], submit: Submit, webhook_receiver: Any,
) -> None:  # fmt: skip
    settings = settings.override(
        models=f"tiny={tiny_model_dir}", webhook_allowlist="127.0.0.1", webhook_retry_base_s=0.05
    )
    webhook_receiver.statuses = [503]
    runner = InProcessJobQueue(settings, store, storage)
    runner.start()
    try:
        jobs = [submit(store, generate_job(seed=i, webhook_url=webhook_receiver.url)) for i in range(2)]
        for job in jobs:
            runner.enqueue(job)
        for job in jobs:
            wait_for(lambda j=job: store.get(j.id).status.terminal, 60, "the embedded job to finish")
            assert store.get(job.id).status is JobStatus.succeeded
        assert runner.ready and runner.depth("generate") == 0
        assert len(storage.list("tenants/acme/jobs/")) == 2
        requests = webhook_receiver.wait_for(3)  # one 503, then both delivered
        secret = secret_for_tenant("acme", settings.webhooks, settings.process.data_dir)
        delivered = {
            json.loads(body)["data"]["id"] for headers, body in requests[1:] if verify(secret, headers, body)
        }
        assert delivered == {job.id for job in jobs}
        assert REGISTRY.get_sample_value("fae_worker_ready") == 1
    finally:
        runner.stop()
    assert not runner.ping() and REGISTRY.get_sample_value("fae_worker_ready") == 0


def test_embedded_runner_batches_concurrent_jobs(
    store: JobStore, storage: LocalStorage, settings: Settings, tiny_model_dir: Path,
    generate_job: Callable[..., Job], submit: Submit,
) -> None:  # fmt: skip
    """Embedded mode holds FAE_WORKER_CONCURRENCY jobs at once: queued jobs share generator calls."""
    settings = settings.override(models=f"tiny={tiny_model_dir}", worker_concurrency=4)
    jobs = [submit(store, generate_job(steps=40, seed=i)) for i in range(4)]
    runner = InProcessJobQueue(settings, store, storage)
    for job in jobs:  # queued before the model is warm: the four job threads take them together
        runner.enqueue(job)
    calls_before = REGISTRY.get_sample_value("fae_batch_size_count") or 0.0
    rows_before = REGISTRY.get_sample_value("fae_batch_size_sum") or 0.0
    runner.start()
    try:
        for job in jobs:
            wait_for(lambda j=job: store.get(j.id).status.terminal, 60, "the embedded job to finish")
            assert store.get(job.id).status is JobStatus.succeeded
    finally:
        runner.stop()
    calls = REGISTRY.get_sample_value("fae_batch_size_count") - calls_before
    rows = REGISTRY.get_sample_value("fae_batch_size_sum") - rows_before
    warmup_rows = 2  # load_and_warm's one-image, two-step generation
    assert rows == 4 * 40 + warmup_rows
    assert calls <= (rows - warmup_rows) / 2 + warmup_rows, f"{calls} calls for {rows} sample-steps"
