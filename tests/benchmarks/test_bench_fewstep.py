"""The few-step benchmark's speed section and picture, on a tiny teacher and its tiny student (seconds); the
quality section is the demo evaluation's code, run on the shipped models for the card."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image

from benchmarks.bench_fewstep import PICTURE_PROMPTS, main
from model.pipeline import FAEPipeline
from model.training.distill import DistillConfig, distill
from model.training.teacher_pairs import PairSettings


def test_speed_and_picture_compare_the_student_with_its_teacher(tmp_path: Path) -> None:
    teacher = FAEPipeline.from_preset("tiny-t2i", seed=0)
    teacher.save_pretrained(str(tmp_path / "teacher"))
    config = DistillConfig(
        pairs=PairSettings(count=4, teacher_steps=2, chunk_size=4), train_steps=1, batch_size=2
    )
    distill(teacher, ["sun", "rocket"], tmp_path / "student", config, tmp_path / "cache", log=lambda _: None)
    args = ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--skip-quality"]
    args += ["--requests", "2", "--n-per-request", "1", "--repeats", "1"]
    assert main([*args, "--picture", str(tmp_path / "p.png"), "--out", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["speed"]
    assert [(r["model"], r["steps"]) for r in rows] == [("teacher", 50), ("teacher", 25), ("student", 4)]
    assert rows[0]["speedup_vs_teacher50"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    with PIL.Image.open(tmp_path / "p.png") as picture:  # 4 rows (teacher 50, student 1/2/4) of the prompts
        assert picture.width >= 96 * len(PICTURE_PROMPTS) and picture.height > 4 * 96
