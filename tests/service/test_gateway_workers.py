"""`fae serve --workers 2` on loopback: two gateway processes share the port, and `/metrics` adds them up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from tests.service.conftest import API_KEYS, auth
from tests.service.test_embedded_cli import REPO, free_port

FROZEN = re.compile(r"^fae_gc_frozen_objects (\S+)$", re.M)
HEALTHZ = re.compile(r'^fae_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.M)


def pids_that_counted(metrics_dir: Path) -> set[str]:
    return {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}


def test_two_gateway_processes_report_metrics_that_add_up(tmp_path: Path, redis_server, model_dirs) -> None:
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"a stale file of an earlier run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAE_", "PROMETHEUS_"))}
    env |= {
        "FAE_REDIS_URL": redis_server.url(),
        "FAE_REDIS_NAMESPACE": f"workers-{port}",
        "FAE_API_KEYS": API_KEYS,
        "FAE_MODELS": f"cls={model_dirs['cls']}",
        "FAE_DATA_DIR": str(tmp_path / "var"),
        "FAE_METRICS_DIR": str(metrics_dir),
    }
    cmd = [sys.executable, "-m", "fae.cli", "serve", "--workers", "2", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert not (metrics_dir / "counter_1.db").exists()  # emptied at start

        def probe(_: int) -> int:
            return httpx.get(f"{base}/healthz", timeout=10).status_code  # a new connection each time

        sent = 1
        with ThreadPoolExecutor(8) as pool:
            while len(pids_that_counted(metrics_dir)) < 2:  # until the kernel handed both processes some
                assert sent < 4000, "one process answered every connection"
                assert set(pool.map(probe, range(200))) == {200}
                sent += 200
        for _ in range(6):  # whichever process answers the scrape reports the sum of both
            scrape = httpx.get(f"{base}/metrics", timeout=10)
            assert scrape.status_code == 200
            assert float(HEALTHZ.search(scrape.text).group(1)) == sent
            # each process froze its start-up objects (the default, FAE_GC_FREEZE): tens of thousands each
            assert float(FROZEN.search(scrape.text).group(1)) > 2 * 20_000
        job = httpx.post(f"{base}/v1/generate", json={"class_label": 1}, headers=auth("acme"), timeout=10)
        assert job.status_code == 202, job.text
        assert (
            httpx.get(f"{base}/v1/jobs/{job.json()['id']}", headers=auth("acme")).json()["status"] == "queued"
        )
        # every request's access line, written by each process straight to its log stream (core.logs.log_access)
        lines = [
            json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line[:1] == "{"
        ]
        access = [line for line in lines if line["logger"] == "fae.access"]
        assert sum(line["route"] == "/healthz" and line["status_code"] == 200 for line in access) >= sent
        polled = [line for line in access if line["route"] == "/v1/jobs/{job_id}"]
        assert len(polled) == 1 and polled[0]["tenant"] == "acme" and polled[0]["request_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        redis.Redis.from_url(redis_server.url()).delete("generate")  # Celery's queue: no worker takes it here
