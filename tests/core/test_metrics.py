"""Metric families exist with their agreed names and merge across processes in multi-process mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from core import metrics

FAMILIES = {
    "fae_http_requests",
    "fae_http_request_duration_seconds",
    "fae_queue_depth",
    "fae_job_duration_seconds",
    "fae_jobs",
    "fae_images_generated",
    "fae_batch_size",
    "fae_denoise_step_seconds",
    "fae_model_warmup_seconds",
    "fae_gpu_memory_bytes",
    "fae_job_failures",
    "fae_webhook_deliveries",
    "fae_worker_ready",
    "fae_dead_letters",
    "fae_cuda_graph_fallbacks",
}
REPO = Path(__file__).resolve().parents[2]


def test_every_family_is_exposed() -> None:
    metrics.JOBS_TOTAL.labels(kind="generate", status="succeeded").inc()
    body, content_type = metrics.render_latest()
    assert content_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert names >= FAMILIES


_CHILD = """
from core import metrics
metrics.JOBS_TOTAL.labels(kind="generate", status="succeeded").inc(3)
metrics.WORKER_READY.set(1)
"""

_RENDER = """
from core import metrics
assert metrics.multiprocess_enabled()
print(metrics.render_latest()[0].decode())
"""


def _run(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_multiprocess_mode_sums_counters_from_all_processes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
    env["FAE_METRICS_DIR"] = str(tmp_path / "prom")  # the setting turns multi-process mode on
    _run(_CHILD, env)
    _run(_CHILD, env)
    assert any((tmp_path / "prom").iterdir())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_run(_RENDER, env))
        for sample in family.samples
    }
    assert samples[("fae_jobs_total", (("kind", "generate"), ("status", "succeeded")))] == 6.0
