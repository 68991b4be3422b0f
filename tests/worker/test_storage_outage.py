"""A storage outage (issue 14), on real SeaweedFS behind a loopback TCP proxy that a test can cut and restore:
a finished job's uploads wait it out without redoing the denoising, a longer one fails the job with a storage
reason (not `internal`), and the gateway answers a fine-tune upload with 503 and Retry-After."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.contract import Job, JobStatus
from core.jobstore import MemoryJobStore
from core.provenance import ensure_development_signer
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


class FlakyStorage:
    """Healthy or not, as a test says; records nothing else."""

    def __init__(self) -> None:
        self.healthy = True

    def ping(self) -> bool:
        return self.healthy


def test_storage_watch_pauses_and_resumes_consuming() -> None:
    from worker.runtime import StorageWatch

    storage, calls = FlakyStorage(), []
    broker_up = [False]

    def pause(queue: str) -> None:
        if not broker_up[0]:
            raise ConnectionError("broker down too")
        calls.append(("pause", queue))

    watch = StorageWatch(storage, 60, ["generate"], pause, lambda q: calls.append(("resume", q)))  # type: ignore[arg-type]
    watch.check()
    assert calls == [] and not watch.paused
    storage.healthy = False
    watch.check()  # the broker is down as well: nothing changed, tried again next time
    assert calls == [] and not watch.paused
    broker_up[0] = True
    watch.check()
    watch.check()  # still down: paused once, not again
    assert calls == [("pause", "generate")] and watch.paused
    storage.healthy = True
    watch.check()
    assert calls == [("pause", "generate"), ("resume", "generate")] and not watch.paused


@pytest.mark.slow
def test_a_real_worker_stops_consuming_while_storage_is_down(
    redis_server: Any, s3_server: Any, s3_bucket: str, s3_proxy: Any, tiny_model_dir: Path,
    generate_job: Callable[..., Job], tmp_path: Path,
) -> None:  # fmt: skip
    """Through a real Celery worker: jobs sent during an outage stay on the queue (not in the worker's retry
    timers, not failed), and run once storage is back."""
    import os
    import subprocess
    import sys
    import time
    import uuid

    import httpx

    from core.jobqueue import CeleryJobQueue
    from core.jobstore import make_job_store

    repo = Path(__file__).resolve().parents[2]
    http_port = _free_port()
    fields = {
        **s3_server.settings_fields(s3_bucket),
        "s3_endpoint_url": f"http://127.0.0.1:{s3_proxy.port}",
        "redis_url": redis_server.url(5),
        "redis_namespace": f"outage-{uuid.uuid4().hex[:8]}",
        "models": f"tiny={tiny_model_dir}",
        "device": "cpu",
        "data_dir": str(tmp_path),
        "heartbeat_s": 0.3,
        "worker_http_port": http_port,
    }
    # Workers refuse to start without a C2PA signer: give them one, as the chart's Secret does.
    fields["c2pa_sign_cert"], fields["c2pa_private_key"] = ensure_development_signer(tmp_path / "signer")
    settings = Settings().override(**fields)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}
    env |= {f"FAE_{k.upper()}": str(v) for k, v in fields.items()} | {"PYTHONPATH": str(repo)}
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "fae.cli", "worker", "--queues", "generate"],
        cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    store, queue = make_job_store(settings), CeleryJobQueue(settings)

    def wait(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: " + (tmp_path / "worker.log").read_text()
            )
            time.sleep(0.1)

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait(ready, "the worker to be ready")
        s3_proxy.cut()
        wait(lambda: "paused consuming" in (tmp_path / "worker.log").read_text(), "the worker to pause")
        jobs = []
        for seed in range(3):
            job, _ = store.create(generate_job(seed=seed))
            store.mark_enqueued(job)
            queue.enqueue(job)
            jobs.append(job)
        time.sleep(2)  # a consuming worker would have taken and retried them by now
        assert queue.depth("generate") == 3
        assert all(store.get(j.id).status is JobStatus.queued and store.get(j.id).attempts == 0 for j in jobs)
        s3_proxy.restore()
        wait(lambda: all(store.get(j.id).status.terminal for j in jobs), "the jobs to run after the outage")
        assert all(store.get(j.id).status is JobStatus.succeeded for j in jobs)
    finally:
        worker.terminate()
        worker.wait(30)
        queue.stop()
        store.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
