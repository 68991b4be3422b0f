"""The Grafana dashboard (one JSON file, shipped by the chart and by compose) uses only real metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

# The metric names agreed in the interfaces document (service/metrics.py implements them).
METRICS = {
    "fae_http_requests_total": "counter",
    "fae_http_request_duration_seconds": "histogram",
    "fae_queue_depth": "gauge",
    "fae_job_duration_seconds": "histogram",
    "fae_jobs_total": "counter",
    "fae_images_generated_total": "counter",
    "fae_batch_size": "histogram",
    "fae_denoise_step_seconds": "histogram",
    "fae_model_warmup_seconds": "gauge",
    "fae_gpu_memory_bytes": "gauge",
    "fae_job_failures_total": "counter",
    "fae_webhook_deliveries_total": "counter",
    "fae_worker_ready": "gauge",
    "fae_dead_letters": "gauge",
    "fae_http_held_request_duration_seconds": "histogram",
    "fae_model_info": "gauge",
    "fae_model_version_unavailable_total": "counter",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# What an operator must see, per the deployment issue.
REQUIRED = {
    "request rate": "fae_http_requests_total",
    "request latency": "fae_http_request_duration_seconds",
    "queue depth": "fae_queue_depth",
    "images per second": "fae_images_generated_total",
    "batch size": "fae_batch_size",
    "step time": "fae_denoise_step_seconds",
    "GPU memory": "fae_gpu_memory_bytes",
    "failures": "fae_job_failures_total",
}


@pytest.fixture(scope="module")
def dashboard(repo_root: Path) -> dict[str, Any]:
    return json.loads((repo_root / "helm/files/dashboards/fae.json").read_text())


def panel_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_base(series: str) -> str:
    """The metric a PromQL series name belongs to (histograms expose _bucket/_sum/_count series)."""
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base
    return series


def used_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {
        metric_base(name) for expr in panel_exprs(dashboard) for name in re.findall(r"\bfae_[a-z0-9_]+", expr)
    }


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= len(REQUIRED)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for panel in panels:
        assert panel["targets"], panel["title"]
        # The data source is a variable, so the same file works with compose's and a cluster's Prometheus.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_dashboard_uses_only_known_metrics(dashboard: dict[str, Any]) -> None:
    unknown = used_metrics(dashboard) - set(METRICS)
    assert not unknown, f"dashboard queries metrics nobody exports: {sorted(unknown)}"


def test_dashboard_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    used = used_metrics(dashboard)
    missing = {what: metric for what, metric in REQUIRED.items() if metric not in used}
    assert not missing


def test_histograms_are_queried_through_their_series(dashboard: dict[str, Any]) -> None:
    for expr in panel_exprs(dashboard):
        for name in re.findall(r"\bfae_[a-z0-9_]+", expr):
            if METRICS.get(name) == "histogram":
                pytest.fail(f"histogram {name} used without _bucket/_sum/_count in: {expr}")
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and "le" in expr, expr


def test_dashboard_metrics_are_defined_in_core_metrics(dashboard: dict[str, Any], repo_root: Path) -> None:
    source = (repo_root / "core/metrics.py").read_text()
    for metric in used_metrics(dashboard):
        # prometheus_client adds `_total` to counters itself, so the source may name either form.
        assert metric in source or metric.removesuffix("_total") in source, metric
