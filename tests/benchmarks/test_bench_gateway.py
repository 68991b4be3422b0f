"""The gateway benchmark's short run: real redis-server and uvicorn processes, every kind of point, each gateway
point paired with the baseline point measured next to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_gateway import REPO, main


@pytest.mark.slow
def test_a_short_run_pairs_every_gateway_point_with_a_baseline_point(tmp_path: Path) -> None:
    out = tmp_path / "gateway.json"
    args = ["--concurrency", "8", "--repeats", "2", "--duration", "0.3", "--stacks", "h11", "--out", str(out)]
    assert main([*args, "--scenarios", "get,post-1-tenant", "--app-dir", f"{REPO},{REPO}"]) == 0
    report = json.loads(out.read_text())
    points = report["points"]
    assert {p["app"] for p in points if p["scenario"] != "inflight-sweep"} == {
        "baseline/h11",
        "gateway:0/h11",  # two checkouts with one folder name: told apart by position
        "gateway:1/h11",
    }
    assert all(p["errors"] == 0 and p["requests"] > 0 and p["cpu_ms_per_request"] > 0 for p in points)
    assert {p["backlog"] for p in points if p["scenario"] == "inflight-sweep"} == {0, 1000, 4000, 16000}
    ratios = [line for line in report["summary"] if "x baseline" in line]
    assert len(ratios) == 4  # get and POST, for each gateway
