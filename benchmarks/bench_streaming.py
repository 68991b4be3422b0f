"""Cached vs streamed features for stage Ia on tar shards: `python -m benchmarks.bench_streaming`.

Writes a synthetic image set (model.synthetic), packs it with `pack_shards`, then trains stage Ia twice with
the same seed through `model.training.runner.train`: once from a float32 feature cache (built first, timed
in the set-up time) and once streaming the shards with the encoder online. Prints one JSON line: the cost per step of
each path, the cache build time, and the largest difference between the two runs' per-step losses (the two
paths read the same batches in the same order, so this should be float rounding, ~1e-7 relative).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from model.shards import pack_shards
from model.synthetic import write_dataset
from model.training.config import TrainConfig
from model.training.runner import train


def run(data: Path, out: Path, source: str, args: argparse.Namespace) -> tuple[dict, list[float], float]:
    losses: list[float] = []

    def record(*, step: int, total: int, eta_s: float | None, loss: float) -> None:
        losses.append(loss)

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=2e-3,
        seed=0,
        checkpoint_every=args.steps,
        feature_source=source,
        feature_cache_dtype="float32",
    )
    tic = time.perf_counter()
    report = train(
        data=data,
        out_dir=out,
        preset=args.preset,
        stage="ia",
        config=config,
        progress_callback=record,
        show_progress=False,
        device="cpu",
    )
    return report["stages"]["ia"], losses, time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_streaming", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32, help="synthetic image size in pixels")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_dataset(root / "images", args.images, "shapes", seed=0, size=args.size)
        tic = time.perf_counter()
        shards = pack_shards(folder, root / "shards", images_per_shard=args.shard_size)
        pack_s = time.perf_counter() - tic
        cached, cached_losses, cached_total = run(root / "shards", root / "cached", "cache", args)
        streamed, streamed_losses, streamed_total = run(root / "shards", root / "streamed", "stream", args)
    step_cached = cached["duration_s"] / args.steps
    step_streamed = streamed["duration_s"] / args.steps
    difference = max(
        abs(a - b) / max(abs(a), 1e-12) for a, b in zip(cached_losses, streamed_losses, strict=True)
    )
    print(
        json.dumps(
            {
                "images": args.images,
                "shards": len(shards.shards),
                "image_size": args.size,
                "preset": args.preset,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "pack_s": round(pack_s, 2),
                # outside the steps: model set-up and writing, plus building the cache (cached path only)
                "cached_setup_s": round(cached_total - cached["duration_s"], 2),
                "streamed_setup_s": round(streamed_total - streamed["duration_s"], 2),
                "cached_step_ms": round(1000 * step_cached, 2),
                "streamed_step_ms": round(1000 * step_streamed, 2),
                "max_relative_loss_difference": difference,
                "final_loss": [cached["final_loss"], streamed["final_loss"]],
                "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}",
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
