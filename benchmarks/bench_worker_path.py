"""Cross-request batching through the real worker path, on this machine: `python -m benchmarks.bench_worker_path`.

Starts a real `redis-server` and a real `fae worker` (Celery, the shipped demo model, CPU unless told otherwise),
submits generate jobs through the job store and Celery exactly as the gateway does, and compares, in one run:

- a worker holding `--concurrency` jobs at once (their steps share generator calls) against the same worker
  holding one job at a time (`FAE_WORKER_CONCURRENCY=1`, what the service did before);
- saturation throughput (a burst of jobs), then open-loop Poisson arrivals at 50% and 80% of the one-at-a-time
  worker's capacity: p50/p99 latency (job created → finished) and achieved throughput, as ratios;
- in process: the engine's per-step overhead (`DenoisingBatcher.step`) as a fraction of the bare generator
  forward on the same rows.

Prints one JSON document; `benchmarks/RESULTS.md` records the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from core.contract import GenerateRequest, Job, JobKind, JobStatus
from core.jobqueue import CeleryJobQueue
from core.jobstore import make_job_store
from core.jobstore.base import utcnow
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def worker(env: dict[str, str], concurrency: int, log_path: Path) -> Iterator[None]:
    """A real `fae worker` on the generate queue, ready (model loaded and warm) when the block starts."""
    port = free_port()
    env = {**env, "FAE_WORKER_CONCURRENCY": str(concurrency), "FAE_WORKER_HTTP_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fae.cli", "worker", "--queues", "generate"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the worker exited: see {log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            raise SystemExit(f"the worker did not become ready: see {log_path}")
        yield
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


class Submitter:
    """Creates jobs in the job store and sends them to Celery, as the gateway's admission does."""

    def __init__(self, settings: Settings, request: dict[str, Any]) -> None:
        self.store = make_job_store(settings)
        self.queue = CeleryJobQueue(settings)
        self.request = GenerateRequest.model_validate(request).model_dump(mode="json")

    def submit(self, seed: int) -> str:
        job = Job(
            id=uuid.uuid4().hex,
            kind=JobKind.generate,
            status=JobStatus.queued,
            tenant=f"bench-{seed % 4}",
            request={**self.request, "seed": seed},
            created_at=utcnow(),
        )
        stored, _ = self.store.create(job)  # no in-flight limit: the benchmark's load is the point
        self.store.mark_enqueued(stored)
        self.queue.enqueue(stored)
        return stored.id

    def wait(self, job_ids: list[str], timeout_s: float) -> list[Job]:
        deadline = time.monotonic() + timeout_s
        pending, done = set(job_ids), {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = self.store.get(job_id)
                if job is not None and job.status.terminal:
                    done[job_id] = job
                    pending.discard(job_id)
            time.sleep(0.05)
        if pending:
            raise SystemExit(f"{len(pending)} jobs did not finish within {timeout_s} s")
        failed = [j for j in done.values() if j.status is not JobStatus.succeeded]
        if failed:
            raise SystemExit(f"{len(failed)} jobs failed, e.g. {failed[0].error}")
        return [done[j] for j in job_ids]

    def close(self) -> None:
        self.queue.stop()
        self.store.close()


def latencies(jobs: list[Job]) -> list[float]:
    return [(j.finished_at - j.created_at).total_seconds() for j in jobs if j.finished_at is not None]


def saturation(submitter: Submitter, jobs: int) -> float:
    """Jobs per second with a burst of `jobs` queued at once (the worker never idles)."""
    started = time.perf_counter()
    ids = [submitter.submit(seed) for seed in range(jobs)]
    submitter.wait(ids, 600)
    return jobs / (time.perf_counter() - started)


def open_loop(submitter: Submitter, rate: float, jobs: int, seed: int) -> dict[str, float]:
    """Poisson arrivals at `rate` jobs/s (inter-arrival times drawn up front, so both workers see the same)."""
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) for _ in range(jobs)]
    ids, started = [], time.perf_counter()
    due = started
    for i, gap in enumerate(gaps):
        due += gap
        time.sleep(max(due - time.perf_counter(), 0.0))
        ids.append(submitter.submit(1000 + i))
    done = submitter.wait(ids, 600)
    elapsed = max(j.finished_at for j in done if j.finished_at) - min(j.created_at for j in done)
    lat = sorted(latencies(done))
    return {
        "rate_jobs_per_s": round(rate, 3),
        "jobs": jobs,
        "throughput_jobs_per_s": round(jobs / elapsed.total_seconds(), 3),
        "p50_s": round(statistics.median(lat), 3),
        "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
    }


def step_overhead(model_dir: Path | None, batch: int, steps: int, guidance: float) -> dict[str, float]:
    """The engine's per-step cost beyond the generator forward, on the same rows (in this process)."""
    import torch

    from model.batching import DenoisingBatcher, DenoisingJob
    from model.repository import load_pipeline

    pipe = load_pipeline(model_dir, device="cpu")
    prompts = ["red apple"] * batch
    with torch.inference_mode():
        batcher = DenoisingBatcher(pipe, max_batch_size=batch)
        samples = pipe.prepare_samples(
            prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, seed=list(range(batch))
        )
        batcher.add(DenoisingJob("bench", samples))
        batcher.step()  # warm: the first step admits
        step_times = []
        for _ in range(steps - 2):
            tic = time.perf_counter()
            batcher.step()
            step_times.append(time.perf_counter() - tic)
        rows = batch * (2 if guidance != 1.0 else 1)
        cond = pipe.encode_text(prompts * (2 if guidance != 1.0 else 1))
        x = torch.randn(rows, *pipe.latent_shape).to(pipe.generator.dtype)
        t = torch.full((rows,), 0.5)
        forward_times = []
        for _ in range(steps - 2):
            tic = time.perf_counter()
            pipe.generator(x, t, **cond)
            forward_times.append(time.perf_counter() - tic)
    step_s, forward_s = statistics.median(step_times), statistics.median(forward_times)
    return {
        "batch": batch,
        "rows_per_forward": rows,
        "step_ms": round(step_s * 1000, 3),
        "forward_ms": round(forward_s * 1000, 3),
        "overhead_of_forward": round((step_s - forward_s) / forward_s, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_worker_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: the shipped demo model)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--burst", type=int, default=24, help="jobs in the saturation burst")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per open-loop run")
    args = parser.parse_args(argv)

    from model.repository import default_model_dir  # only to name the default model; the worker loads it

    model_dir = args.model or default_model_dir()
    request = {"prompt": "red apple", "steps": args.steps, "guidance_scale": args.guidance}
    report: dict[str, Any] = {
        "model": str(model_dir),
        "device": "cpu",
        "cpus": os.cpu_count(),
        "steps": args.steps,
        "guidance": args.guidance,
        "concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory(prefix="fae-bench-") as tmp, redis_server(Path(tmp)) as redis_url:
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}
        fields = {
            "redis_url": redis_url,
            "redis_namespace": f"bench-{uuid.uuid4().hex[:8]}",
            "models": f"demo={model_dir}",
            "device": "cpu",
            "data_dir": str(Path(tmp) / "data"),
            "log_json": "true",
            "log_level": "WARNING",
            "max_inflight_per_tenant": "100000",
            "progress_interval_s": "0.25",
        }
        env = {**base_env, **{f"FAE_{k.upper()}": v for k, v in fields.items()}, "PYTHONPATH": str(REPO)}
        settings = Settings().override(**fields)
        submitter = Submitter(settings, request)
        runs: dict[str, Any] = {}
        try:
            capacity = 0.0  # the one-at-a-time worker's, measured first: both face the same arrival rates
            for label, concurrency in (("one_at_a_time", 1), ("batched", args.concurrency)):
                with worker(env, concurrency, Path(tmp) / f"{label}.log"):
                    runs[label] = {"saturation_jobs_per_s": round(saturation(submitter, args.burst), 3)}
                    capacity = capacity or runs[label]["saturation_jobs_per_s"]
                    runs[label]["arrivals"] = [
                        open_loop(submitter, load * capacity, args.jobs, seed=int(load * 100))
                        for load in (0.5, 0.8)
                    ]
        finally:
            submitter.close()
    report["runs"] = runs
    base, batched = runs["one_at_a_time"], runs["batched"]
    report["ratios"] = {
        "saturation_throughput_batched_vs_one": round(
            batched["saturation_jobs_per_s"] / base["saturation_jobs_per_s"], 2
        ),
        **{
            f"p{p}_at_{int(load * 100)}pct_one_vs_batched": round(one[f"p{p}_s"] / many[f"p{p}_s"], 2)
            for load, one, many in zip((0.5, 0.8), base["arrivals"], batched["arrivals"], strict=True)
            for p in (50, 99)
        },
    }
    report["step_overhead"] = [step_overhead(args.model, b, args.steps, args.guidance) for b in (1, 8)]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
