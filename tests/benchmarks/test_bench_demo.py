"""The demo-model latency benchmark runs on the shipped model and reports one line per batch size."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_demo import main
from model.repository import SHIPPED_DEMO_DIR


def test_demo_benchmark_reports_each_batch_size(capsys: pytest.CaptureFixture) -> None:
    assert main(["--device", "cpu", "--batches", "1,2", "--steps", "2", "--repeats", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["batch"] for line in lines] == [1, 2]
    assert all(line["model"] == str(SHIPPED_DEMO_DIR) and line["median_s"] > 0 for line in lines)
