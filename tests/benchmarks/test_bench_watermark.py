"""The watermark benchmark runs and measures what the README claims at the size the worker applies it from."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_watermark import main
from core.watermark import MIN_WATERMARK_SIZE


def test_watermark_benchmark_reports_bit_accuracy_and_psnr(tmp_path: Path) -> None:
    out = tmp_path / "wm.json"
    assert main(["--sizes", str(MIN_WATERMARK_SIZE), "--images", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["size"] == MIN_WATERMARK_SIZE and row["psnr_db"] > 35
    for transformation in ("JPEG q75", "resize 1/2", "crop 5%"):
        assert row["bit_accuracy"][transformation] == 1.0
        assert row["exact_payload_detected"][transformation] == "1/1"
    assert row["false_positives_unmarked"].startswith("0/")
