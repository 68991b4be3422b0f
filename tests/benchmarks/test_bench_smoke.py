"""The serving benchmark's CPU smoke run: every section runs and its correctness checks hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_serving import main


@pytest.mark.slow
def test_smoke_benchmark_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    assert main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["matmul_ceiling_tflops"] > 0
    for row in report["forward"]:
        assert row["eager_finite"] and row["compiled_finite"]
        assert row["compiled_rel_err"] < 1e-4  # float32 on the CPU: compiled equals eager up to reassociation
        assert row["gflop_per_forward"] > 0
    assert {(r["steps"], r["cfg"]) for r in report["end_to_end"]} == {(3, False), (3, True)}
    assert all(r["fast_images_per_s"] > 0 and r["eager_images_per_s"] > 0 for r in report["end_to_end"])
    assert len(report["arrivals"]) == 2 and all(r["p99_ms"] >= r["p50_ms"] > 0 for r in report["arrivals"])
    assert report["dit_peer"]["eager_images_per_s"] > 0
    assert report["startup_cold_s"] > 0 and report["startup_warm_s"] > 0
