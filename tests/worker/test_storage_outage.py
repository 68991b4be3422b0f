"""A storage outage (issue 14), on real SeaweedFS behind a loopback TCP proxy that a test can cut and restore:
a finished job's uploads wait it out without redoing the denoising, a longer one fails the job with a storage
reason (not `internal`), and the gateway answers a fine-tune upload with 503 and Retry-After."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.contract import Job, JobStatus
from core.jobstore import MemoryJobStore
from core.settings import Settings
from core.storage import S3Storage, StorageUnavailable
from worker.engine import Engine
from worker.jobs import execute_job
from worker.jobs.common import JobContext, make_worker_id

pytestmark = pytest.mark.services


@pytest.fixture
def outage_settings(s3_server, s3_bucket, s3_proxy, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        fields = {
            **s3_server.settings_fields(s3_bucket),
            "s3_endpoint_url": f"http://127.0.0.1:{s3_proxy.port}",
            "data_dir": tmp_path,
            "lease_s": 30,
            "heartbeat_s": 0.2,
            "progress_interval_s": 0,
            "cancel_poll_s": 0,
        }
        return Settings().override(**{**fields, **overrides})

    return make


@pytest.fixture
def engine(tiny_pipeline: Any) -> Iterator[Engine]:
    engine = Engine({"tiny": tiny_pipeline})
    try:
        yield engine
    finally:
        engine.close()


def run_job_cut_while_denoising(settings: Settings, engine: Engine, job: Job, proxy: Any) -> Job | None:
    """One delivery whose storage goes down at the last denoising step (it was up when the job started)."""
    store = MemoryJobStore(settings.limits)
    store.create(job)
    store.mark_enqueued(job)
    set_progress = store.set_progress

    def progress_then_cut(job_id: str, step: int, total: int, *args: Any, **kwargs: Any) -> Job:
        if step == total:
            proxy.cut()
        return set_progress(job_id, step, total, *args, **kwargs)

    store.set_progress = progress_then_cut  # type: ignore[method-assign]
    return execute_job(
        job.id, JobContext(store, S3Storage(settings.storage), engine, settings, make_worker_id())
    )


def test_a_short_outage_is_waited_out_without_redoing_the_work(
    outage_settings, s3_proxy, engine, generate_job, s3_server, s3_bucket
) -> None:
    settings = outage_settings(storage_retry_s=30)
    job = generate_job(n=2, steps=2, seed=1)
    restore = threading.Timer(2.0, s3_proxy.restore)  # storage comes back while the job's uploads retry
    restore.start()
    final = run_job_cut_while_denoising(settings, engine, job, s3_proxy)
    assert final is not None and final.status is JobStatus.succeeded, final
    assert final.attempts == 1 and final.timings["upload"] >= 1.0 and not restore.is_alive()
    stored = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(item["Key"] for item in stored) == sorted(output.key for output in final.outputs)


def test_a_long_outage_fails_the_job_with_a_storage_reason(
    outage_settings, s3_proxy, engine, generate_job
) -> None:
    settings = outage_settings(storage_retry_s=1)
    final = run_job_cut_while_denoising(settings, engine, generate_job(n=1, steps=2, seed=1), s3_proxy)
    assert final is not None and final.status is JobStatus.failed
    assert final.error is not None and final.error.reason == "storage_unavailable", final.error


def test_no_job_starts_while_storage_is_down(outage_settings, s3_proxy, engine, generate_job) -> None:
    """The delivery is refused before it is counted or leased (Celery sends it again with backoff), so an
    outage leaves jobs queued instead of draining the queue into failures."""
    settings = outage_settings()
    store = MemoryJobStore(settings.limits)
    job = generate_job(n=1, steps=2, seed=1)
    store.create(job)
    store.mark_enqueued(job)
    context = JobContext(store, S3Storage(settings.storage), engine, settings, make_worker_id())
    s3_proxy.cut()
    with pytest.raises(StorageUnavailable):
        execute_job(job.id, context)
    assert store.get(job.id).status is JobStatus.queued and store.deliveries(job.id) == 0
    s3_proxy.restore()
    assert execute_job(job.id, context).status is JobStatus.succeeded
