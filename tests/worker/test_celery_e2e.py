"""End to end through real Celery worker processes (`fae worker`), a real redis-server and a real S3 (SeaweedFS).

Two workers serve `generate` and `webhooks` with a short lease (3 s), a 1 s reaper and max_deliveries 2, and
a test-only step delay so jobs can be acted on mid-flight. Celery's queues live in their own Redis database
(this module's), the job store under its own namespace.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.contract import Job, JobStatus
from core.jobqueue import CeleryJobQueue, send_webhook_task
from core.jobstore import RedisJobStore
from core.provenance import ensure_development_signer
from core.settings import Settings
from core.storage import S3Storage
from core.webhooks import PROGRESS, secret_for_tenant, verify

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
CELERY_DB = 11  # this module's Redis database: Celery's queue keys are not namespaced
POISON_PROMPT = "poison-pill-for-tests"
# Test-only engine behaviour of every worker this module starts (see hooked_worker.py).
HOOKS = {"crash_on_prompt": POISON_PROMPT, "step_delay_s": 0.03}
HOOKED_WORKER = Path(__file__).with_name("hooked_worker.py")
WORKER_START_TIMEOUT_S = 120.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    http_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while self.get("/readyz")[0] != 200:
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} did not become ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Cluster:
    """The workers plus the gateway's view of the system (job store, queue, storage) for the tests."""

    def __init__(self, env: dict[str, str], settings: Settings, workdir: Path) -> None:
        self.env, self.settings, self.workdir = env, settings, workdir
        self.store = RedisJobStore(settings.redis, settings.limits)
        self.queue = CeleryJobQueue(settings)
        self.storage = S3Storage(settings.storage)
        self.workers: dict[str, WorkerProcess] = {}

    def spawn(self, name: str, queues: str = "generate,webhooks") -> WorkerProcess:
        port = free_port()
        log_path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        env = {**self.env, "FAE_WORKER_HTTP_PORT": str(port)}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(HOOKED_WORKER), json.dumps(HOOKS), "worker", "--queues", queues],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(name, process, port, log_path)
        self.workers[name] = worker
        return worker

    def ensure_running_nowait(self) -> None:
        """Respawn any worker that died (the SIGKILL and poison tests kill them)."""
        for name, worker in list(self.workers.items()):
            if not worker.alive():
                self.spawn(name)

    def ensure_running(self) -> None:
        self.ensure_running_nowait()
        for worker in self.workers.values():
            worker.wait_ready()

    def worker_running(self, job: Job) -> WorkerProcess:
        pid = int((job.worker_id or "::").split(":")[1] or 0)
        matches = [w for w in self.workers.values() if w.pid == pid]
        assert matches, f"no worker has pid {pid} (job worker_id {job.worker_id})"
        return matches[0]

    def submit(self, job: Job) -> Job:
        stored, _ = self.store.create(job)
        self.store.mark_enqueued(stored)
        self.queue.enqueue(stored)
        return stored

    def wait_terminal(self, job_id: str, timeout_s: float = 60.0) -> Job:
        return wait_for(
            lambda: (j := self.store.get(job_id)) is not None and j.status.terminal and j,
            timeout_s,
            f"job {job_id} to finish; logs:\n{self.logs()}",
        )

    def wait_step(self, job_id: str, step: int, timeout_s: float = 60.0) -> Job:
        return wait_for(
            lambda: (
                (j := self.store.get(job_id)) is not None
                and j.status is JobStatus.running
                and j.progress.step >= step
                and j
            ),
            timeout_s,
            f"job {job_id} to reach step {step}",
        )

    def metric_total(self, name: str, **labels: str) -> float:
        """Sum of a sample over every live worker's /metrics."""
        total = 0.0
        for worker in self.workers.values():
            status, body = worker.get("/metrics")
            for line in body.splitlines() if status == 200 else []:
                sample = line.startswith((name + "{", name + " "))
                if sample and all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.log_tail(2500)}" for w in self.workers.values())

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.queue.stop()
        self.store.flush_namespace()
        self.store.close()


@pytest.fixture(scope="module")
def cluster(
    redis_server: Any, s3_server: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    import redis

    bucket = f"fae-worker-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=bucket)
    redis_url = redis_server.url(CELERY_DB)
    redis.Redis.from_url(redis_url).flushdb()  # Celery leftovers of an earlier run of this module
    workdir = tmp_path_factory.mktemp("celery-workers")
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_namespace": f"wtest-{uuid.uuid4().hex[:8]}",
        **s3_server.settings_fields(bucket),
        "models": f"tiny={tiny_model_dir}",
        "device": "cpu",
        "data_dir": str(workdir / "data"),
        "lease_s": 3.0,
        "heartbeat_s": 0.5,
        "reaper_interval_s": 1.0,
        "max_deliveries": 2,
        "progress_interval_s": 0.05,
        "cancel_poll_s": 0.05,
        "webhook_allowlist": "127.0.0.1",
        "webhook_signing_key": "worker-tests-signing-key",
        "webhook_retry_base_s": 0.3,
        "log_json": True,
    }
    # Workers refuse to start without a C2PA signer: give them one, as the chart's Secret does.
    fields["c2pa_sign_cert"], fields["c2pa_private_key"] = ensure_development_signer(workdir / "signer")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FAE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update({f"FAE_{k.upper()}": str(v) for k, v in fields.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    cluster = Cluster(env, Settings().override(**fields), workdir)
    try:
        cluster.spawn("w1")
        cluster.spawn("w2")
        cluster.ensure_running()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def live(cluster: Cluster) -> Cluster:
    cluster.ensure_running()
    return cluster


ADMIN_KEY = "ops-admin-key-0123456789"
USER_KEY = "acme-user-key-0123456789"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def gateway(cluster: Cluster) -> Iterator[Any]:
    """The real gateway app on the cluster's Redis and S3 (in-process, through Starlette's test client)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    settings = cluster.settings.override(api_keys=f"ops:{ADMIN_KEY}:admin,acme:{USER_KEY}:generate")
    app = create_app(settings, job_store=cluster.store, storage=cluster.storage)
    with TestClient(app) as client:
        yield client


def assert_images(cluster: Cluster, job: Job, count: int, fmt: str = "PNG") -> None:
    prefix = f"tenants/{job.tenant}/jobs/{job.id}/"
    keys = cluster.storage.list(prefix)
    assert keys == sorted(o.key for o in job.outputs) and len(keys) == count, keys
    for key in keys:
        image = Image.open(io.BytesIO(cluster.storage.get_bytes(key)))
        assert image.format == fmt and image.size == (32, 32)


def test_generate_end_to_end_with_outputs_in_s3(live: Cluster, generate_job: Callable[..., Job]) -> None:
    images_before = live.metric_total("fae_images_generated_total", model="tiny")
    job = live.submit(generate_job(n=2, steps=3, seed=5))
    final = live.wait_terminal(job.id)
    assert final.status is JobStatus.succeeded, (final.error, live.logs())
    assert final.seeds == [5, 6] and final.attempts == 1 and final.progress.step == 3
    assert {"queued", "denoise", "decode", "upload", "total"} <= set(final.timings)
    assert_images(live, final, 2)
    worker = live.worker_running(final)
    status, body = worker.get("/readyz")
    assert status == 200 and json.loads(body)["checks"] == {
        "model": True,
        "consuming": True,
        "redis": True,
        "storage": True,
    }
    assert live.metric_total("fae_images_generated_total", model="tiny") == images_before + 2
    assert live.metric_total("fae_worker_ready") == 2
    assert live.metric_total("fae_model_warmup_seconds") > 0
    # both froze what booting built, model included (the default, FAE_GC_FREEZE): out of full collections
    assert all(w.get("/metrics")[1].count("\nfae_gc_frozen_objects ") == 1 for w in live.workers.values())
    assert live.metric_total("fae_gc_frozen_objects") > 2 * 50_000
    assert live.metric_total("fae_job_duration_seconds_count", kind="generate", stage="denoise") >= 1
    assert live.metric_total("fae_denoise_step_seconds_count") >= 3


def test_concurrent_jobs_share_generator_calls(live: Cluster, generate_job: Callable[..., Job]) -> None:
    """Each worker holds several jobs at once (FAE_WORKER_CONCURRENCY) and its engine denoises them in shared
    generator calls: 8 jobs of 30 steps take far fewer than 8 × 30 generator calls (fae_batch_size)."""
    jobs_n, steps = 8, 30
    calls_before = live.metric_total("fae_batch_size_count")
    rows_before = live.metric_total("fae_batch_size_sum")
    jobs = [live.submit(generate_job(steps=steps, seed=100 + i)) for i in range(jobs_n)]
    finals = [live.wait_terminal(job.id) for job in jobs]
    assert all(f.status is JobStatus.succeeded for f in finals), [(f.id, f.error) for f in finals]
    calls = live.metric_total("fae_batch_size_count") - calls_before
    rows = live.metric_total("fae_batch_size_sum") - rows_before
    assert rows == jobs_n * steps  # every sample-step denoised once
    assert calls <= jobs_n * steps / 2, (
        f"{calls} generator calls for {rows} sample-steps: jobs were not batched"
    )
    assert len({f.worker_id for f in finals}) <= 2 and all(f.attempts == 1 for f in finals)


def test_generate_through_the_gateway_api(live: Cluster) -> None:
    with gateway(live) as client:
        response = client.post(
            "/v1/generate",
            json={"class_label": 2, "steps": 2, "seed": 1, "output_format": "webp"},
            headers={**auth(USER_KEY), "Prefer": "wait=30"},
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded" and job["outputs"][0]["seed"] == 1
    with urllib.request.urlopen(job["outputs"][0]["url"], timeout=10) as download:  # presigned S3 URL
        assert Image.open(io.BytesIO(download.read())).format == "WEBP"


def test_image_to_image_and_embeddings_through_celery_workers(live: Cluster) -> None:
    """Issue 18 on the real path: the gateway stores the upload in S3, a Celery worker reads it, and an `embed`
    job (task `fae.embed` on the generate queue) answers `POST /v1/embeddings` synchronously."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buffer, format="PNG")
    with gateway(live) as client:
        response = client.post(
            "/v1/generate",
            data={"class_label": "2", "steps": "2", "seed": "1", "strength": "0.5"},
            files={"image": ("in.png", buffer.getvalue(), "image/png")},
            headers={**auth(USER_KEY), "Prefer": "wait=30"},
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded" and live.storage.exists(job["request"]["image"])
        embedded = client.post(
            "/v1/embeddings", json={"images": [job["outputs"][0]["key"]]}, headers=auth(USER_KEY)
        )
        assert embedded.status_code == 200, embedded.text
        assert len(embedded.json()["data"][0]["embedding"]) == embedded.json()["dimensions"]


def test_cancel_running_and_queued_jobs(live: Cluster, generate_job: Callable[..., Job]) -> None:
    long_jobs = [live.submit(generate_job(steps=250, seed=i)) for i in range(2)]  # one per worker
    for job in long_jobs:
        live.wait_step(job.id, 2)
    queued = live.submit(generate_job(steps=2))
    assert live.store.request_cancel(queued.id).status is JobStatus.canceled  # queued: canceled at once
    for job in long_jobs:
        live.store.request_cancel(job.id)
    for job in long_jobs:
        final = live.wait_terminal(job.id, 30)
        assert final.status is JobStatus.canceled and final.error.reason == "canceled"
        assert 2 <= final.progress.step < 250 and final.outputs == []
    # A job sent after the canceled one: once it ran, the canceled job's message was consumed (FIFO).
    after = live.submit(generate_job(steps=2))
    assert live.wait_terminal(after.id).status is JobStatus.succeeded
    skipped = live.store.get(queued.id)
    assert skipped.status is JobStatus.canceled and skipped.attempts == 0 and skipped.worker_id is None
    assert live.queue.depth("generate") == 0
    assert live.storage.list(f"tenants/acme/jobs/{queued.id}/") == []


def test_webhook_delivered_signed_after_a_failed_attempt(
    live: Cluster, generate_job: Callable[..., Job], webhook_receiver: Any
) -> None:
    webhook_receiver.statuses = [500]
    job = live.submit(generate_job(steps=2, webhook_url=webhook_receiver.url))
    assert live.wait_terminal(job.id).status is JobStatus.succeeded
    (first_headers, _), (headers, body) = webhook_receiver.wait_for(2, timeout_s=30)
    assert first_headers["webhook-id"] == headers["webhook-id"]  # one event, retried
    secret = secret_for_tenant("acme", live.settings.webhooks, live.settings.process.data_dir)
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body.replace(b"succeeded", b"failed"))
    event = json.loads(body)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job.id
    assert event["data"]["outputs"][0]["url"].startswith(live.settings.storage.s3_endpoint_url)
    time.sleep(0.5)
    assert len(webhook_receiver.requests) == 2  # no delivery after the success


def test_a_started_webhook_goes_through_the_webhooks_queue_when_asked(
    live: Cluster, generate_job: Callable[..., Job], webhook_receiver: Any
) -> None:
    events = ["job.started", "job.succeeded"]
    job = live.submit(generate_job(steps=2, webhook_url=webhook_receiver.url, webhook_events=events))
    assert live.wait_terminal(job.id).status is JobStatus.succeeded
    received = [json.loads(body) for _, body in webhook_receiver.wait_for(2, timeout_s=30)]
    assert sorted(event["type"] for event in received) == events
    assert {event["id"] for event in received} == {f"msg_{job.id}_started_1", f"msg_{job.id}_succeeded"}
    time.sleep(0.5)
    assert len(webhook_receiver.requests) == 2


def test_queued_events_keep_their_emitted_ids_and_old_messages_still_deliver(
    live: Cluster, generate_job: Callable[..., Job], webhook_receiver: Any
) -> None:
    """The workers run `fae.webhook` messages of both forms: one carrying the progress event as emitted (attempt
    1, step 2) and one queued before that argument existed, which the job as it is now (attempt 2, step 6)
    names. Both are delivered after the job moved on."""
    job, _ = live.store.create(
        generate_job(webhook_url=webhook_receiver.url, webhook_events=["job.progress", "job.succeeded"])
    )
    live.store.transition(job.id, JobStatus.running, attempts=1, started_at=datetime.now(UTC))
    emitted = live.store.set_progress(job.id, 2, 10)
    live.store.transition(job.id, JobStatus.queued)
    live.store.transition(job.id, JobStatus.running, attempts=2, started_at=datetime.now(UTC))
    live.store.set_progress(job.id, 6, 10)
    try:
        live.queue.notify_event(emitted, PROGRESS)
        send_webhook_task(live.queue.app, job.id, 1, event=PROGRESS)  # the three-argument form
        received = {
            h["webhook-id"]: json.loads(body) for h, body in webhook_receiver.wait_for(2, timeout_s=30)
        }
        assert set(received) == {f"msg_{job.id}_progress_1_2", f"msg_{job.id}_progress_2_6"}
        assert received[f"msg_{job.id}_progress_1_2"]["data"]["progress"]["step"] == 2
        assert received[f"msg_{job.id}_progress_2_6"]["data"]["progress"]["step"] == 6
    finally:
        live.store.transition(job.id, JobStatus.canceled)


def test_sigkilled_worker_job_is_requeued_and_succeeds_once(
    live: Cluster, generate_job: Callable[..., Job]
) -> None:
    job = live.submit(generate_job(n=2, steps=60, seed=9))  # ~1.8 s of steps
    running = live.wait_step(job.id, 5)
    victim = live.worker_running(running)
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed_at = time.monotonic()
    requeue_limit_s = live.settings.worker.lease_s + live.settings.worker.reaper_interval_s + 2.0
    rerun = wait_for(
        lambda: (j := live.store.get(job.id)).attempts == 2 and j,
        requeue_limit_s + 10,
        f"the job to start again after its worker was killed; logs:\n{live.logs()}",
    )
    assert time.monotonic() - killed_at < requeue_limit_s + 1.0
    assert rerun.worker_id != running.worker_id
    final = live.wait_terminal(job.id)
    assert final.status is JobStatus.succeeded and final.attempts == 2, (final.error, live.logs())
    assert final.seeds == [9, 10]
    assert_images(live, final, 2)
    assert live.metric_total("fae_job_failures_total", kind="generate", reason="worker_lost") >= 1


def test_poison_job_is_dead_lettered_then_replayable(
    cluster: Cluster, generate_job: Callable[..., Job]
) -> None:
    live = cluster  # a worker killed by the previous test comes back inside the loop below
    job = live.submit(generate_job(prompt=POISON_PROMPT, class_label=None))

    def dead_lettered() -> Job | None:
        live.ensure_running_nowait()
        current = live.store.get(job.id)
        return current if current is not None and current.status.terminal else None

    final = wait_for(dead_lettered, 120, f"the poison job to be dead-lettered; logs:\n{live.logs()}")
    assert final.status is JobStatus.failed and final.error.reason == "dead_lettered", final.error
    assert "delivered 2 times" in final.error.message
    records = {d.job_id: d for d in live.store.list_dead_letters()}
    assert records[job.id].deliveries == 2 and records[job.id].tenant == "acme"
    live.ensure_running()
    # The operator fixes the cause (here: the stored request), then replays through the admin API: the
    # failed original stays failed, its request runs again as a new job.
    live.store.update(job.id, request=generate_job(class_label=3, steps=2).request)
    with gateway(live) as client:
        forbidden = client.post(f"/v1/admin/dead-letters/{job.id}/replay", headers=auth(USER_KEY))
        assert forbidden.status_code == 403
        response = client.post(f"/v1/admin/dead-letters/{job.id}/replay", headers=auth(ADMIN_KEY))
        assert response.status_code == 202, response.text
        replay_id = response.json()["id"]
        assert client.get("/v1/admin/dead-letters", headers=auth(ADMIN_KEY)).json()["data"] == []
    replay = live.wait_terminal(replay_id)
    assert (
        replay.status is JobStatus.succeeded
        and replay.attempts == 1
        and replay.metadata["replay_of"] == job.id
    )
    assert_images(live, replay, 1)
    assert live.store.get(job.id).status is JobStatus.failed  # states never go backwards


def test_a_job_pinned_to_a_version_no_worker_holds_stays_queued_and_is_redelivered(
    live: Cluster, generate_job: Callable[..., Job]
) -> None:
    """The workers hold `tiny` (unlabelled); a job pinned to `tiny@9` is never run on it: each worker that takes
    it sends it back (a Celery retry, uncounted), so it stays queued for a worker that will hold version 9."""
    before = live.metric_total("fae_model_version_unavailable_total", model="tiny")
    job = live.submit(generate_job(model="tiny@9", steps=2))
    wait_for(
        lambda: live.metric_total("fae_model_version_unavailable_total", model="tiny") >= before + 2,
        30,
        "two refused deliveries (the job is sent again after the first)",
    )
    held = live.store.get(job.id)
    assert held is not None and held.status is JobStatus.queued
    assert held.attempts == 0 and held.worker_id is None and held.model_version is None
    assert "does not hold" in live.logs()
    assert live.store.request_cancel(job.id).status is JobStatus.canceled  # the next delivery drops it
