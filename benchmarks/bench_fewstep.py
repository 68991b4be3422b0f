"""Few-step student vs its teacher, in one run: `python -m benchmarks.bench_fewstep`.

Quality (the demo model's own evaluation, demo/eval_inputs.py + demo/evaluate.py): the same held-out captions
and seeds through the teacher at 50 and 25 steps with guidance 4 and through the student at 1, 2 and 4 steps
(its guidance built in), each scored by the encoder-space Fréchet distance to the held-out real images and by
prompt adherence (the nearest real image's category / name / style matches the prompt's).

Speed (through the worker's engine, both models loaded in one engine as `fae worker` loads them): one-image
latency (median of `--repeats`) and images/s of `--requests` concurrent requests of `--n-per-request` images.

Optionally writes the side-by-side picture (`--picture`): the same prompts and seeds, teacher 50 steps vs the
student at 1, 2 and 4 steps.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from demo.eval_inputs import EvalSettings, embed, generate, read_manifest, real_features
from demo.evaluate import MATCH_FIELDS, retrieval
from demo.feature_stats import frechet_distance

PICTURE_PROMPTS = ("red apple", "rocket", "grinning face", "sun", "pizza", "blue heart", "ghost", "penguin")


def quality(
    teacher: Any, student: Any, data: Path, n: int, batch_size: int, log: Any
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    entries = read_manifest(data)
    train = [e for e in entries if e["split"] == "train"]
    heldout = [e for e in entries if e["split"] == "heldout"]
    prompts = random.Random(0).sample(heldout, min(n, len(heldout)))  # demo.evaluate's choice (seed 0)
    captions, seeds = [p["caption"] for p in prompts], list(range(len(prompts)))
    encoder = teacher.encoder
    features = real_features(encoder, data, train + heldout, teacher.image_size, batch_size)
    heldout_features = features[len(train) :]
    rows = []
    configs = [("teacher", teacher, 50, 4.0), ("teacher", teacher, 25, 4.0)]
    configs += [("student", student, steps, 1.0) for steps in (1, 2, 4)]
    for name, pipe, steps, guidance in configs:
        started = time.perf_counter()
        settings = EvalSettings(n=n, steps=steps, guidance=guidance, batch_size=batch_size)
        images = generate(pipe, captions, seeds, settings, f"{name} {steps} steps")
        seconds = time.perf_counter() - started
        generated = embed(encoder, images, batch_size)
        rates, _ = retrieval(generated, prompts, features, train + heldout)
        row = {"model": name, "steps": steps, "guidance": guidance, "seconds": round(seconds, 1)}
        row["frechet_distance"] = round(frechet_distance(generated, heldout_features), 2)
        row.update({f"{field}_match": round(rates[field], 3) for field in MATCH_FIELDS})
        rows.append(row)
        log(json.dumps(row))
    reference = rows[0]
    for row in rows:
        row["fd_ratio_vs_teacher50"] = round(row["frechet_distance"] / reference["frechet_distance"], 3)
        row["category_ratio_vs_teacher50"] = round(row["category_match"] / reference["category_match"], 3)
    return rows, {"prompts": len(prompts), "heldout": len(heldout), "train": len(train)}


def speed(
    teacher_dir: Path, student_dir: Path, requests: int, per_request: int, repeats: int, log: Any
) -> list[dict[str, Any]]:
    from core.settings import Settings
    from worker.engine import GenerationRequest
    from worker.engine.loading import load_and_warm

    settings = Settings().override(models=f"teacher={teacher_dir},student={student_dir}")
    engine = load_and_warm(settings.engine, settings.catalog)
    rows = []
    try:
        for model, steps, guidance in (("teacher", 50, 4.0), ("teacher", 25, 4.0), ("student", 4, 1.0)):
            base = {"model": model, "prompt": "red apple", "steps": steps, "guidance_scale": guidance}
            latencies = []
            for repeat in range(repeats):
                tic = time.perf_counter()
                engine.run(GenerationRequest(n=1, seed=repeat, **base))
                latencies.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            handles = [
                engine.submit(GenerationRequest(n=per_request, seed=1000 * i, **base))
                for i in range(requests)
            ]
            for handle in handles:
                handle.result(timeout=3600)
            wall = time.perf_counter() - tic
            row = {
                "model": model,
                "steps": steps,
                "guidance": guidance,
                "latency_1_image_s": round(statistics.median(latencies), 3),
                "images": requests * per_request,
                "images_per_s": round(requests * per_request / wall, 2),
            }
            rows.append(row)
            log(json.dumps(row))
    finally:
        engine.close()
    reference = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_vs_teacher50"] = round(row["images_per_s"] / reference, 2)
    return rows


def picture(teacher: Any, student: Any, path: Path) -> None:
    from demo.grid import sample_grid, save_grid
    from model.pipeline import to_output

    seeds = list(range(len(PICTURE_PROMPTS)))
    images, captions = [], []
    for label, pipe, steps, guidance in (
        ("teacher 50", teacher, 50, 4.0),
        ("student 1", student, 1, 1.0),
        ("student 2", student, 2, 1.0),
        ("student 4", student, 4, 1.0),
    ):
        settings = EvalSettings(n=len(seeds), steps=steps, guidance=guidance, batch_size=len(seeds))
        images += to_output(generate(pipe, list(PICTURE_PROMPTS), seeds, settings, label), "pil")
        captions += [f"{label}: {p}" for p in PICTURE_PROMPTS]
    save_grid(path, sample_grid(images, captions, columns=len(PICTURE_PROMPTS), cell=96, caption_lines=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fewstep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--teacher", type=Path, default=Path("models/fae-demo"))
    parser.add_argument("--student", type=Path, default=Path("models/fae-demo-turbo"))
    parser.add_argument("--data", type=Path, default=Path("var/data/emoji"))
    parser.add_argument("--n", type=int, default=200, help="held-out prompts per configuration")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests in the throughput run")
    parser.add_argument("--n-per-request", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--picture", type=Path, help="write the teacher-vs-student picture here")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from model.io import write_bytes_atomically
    from model.repository import load_pipeline

    def log(line: str) -> None:
        print(line, flush=True)

    teacher, student = load_pipeline(args.teacher), load_pipeline(args.student)
    report: dict[str, Any] = {
        "teacher": str(args.teacher),
        "student": str(args.student),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.picture:
        picture(teacher, student, args.picture)
        log(f"wrote {args.picture}")
    if not args.skip_quality:
        report["quality"], report["counts"] = quality(
            teacher, student, args.data, args.n, args.batch_size, log
        )
    report["speed"] = speed(args.teacher, args.student, args.requests, args.n_per_request, args.repeats, log)
    if args.out:
        write_bytes_atomically(args.out, (json.dumps(report, indent=2) + "\n").encode())
    log(json.dumps({"summary": {k: v for k, v in report.items() if k in ("quality", "speed")}}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
