"""Latency of the shipped demo model (`models/fae-demo`) on this machine: `python -m benchmarks.bench_demo`.

Loads the default model the way the embedded server does, warms it with one generation, then times batches of
1 and 12 images (the README's settings: 25 Euler steps, guidance 4) and prints one JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.repository import default_model_dir, load_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,12", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per batch size (the median is kept)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pipe = load_pipeline(None, device=args.device)
    load_s = time.perf_counter() - started
    settings = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    pipe(prompt="red apple", seed=0, **settings)  # warm-up
    for batch in (int(b) for b in args.batches.split(",")):
        times = []
        for repeat in range(args.repeats):
            tic = time.perf_counter()
            pipe(prompt=["red apple"] * batch, seed=list(range(repeat, repeat + batch)), **settings)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
        median = sorted(times)[len(times) // 2]
        print(
            json.dumps(
                {
                    "model": str(default_model_dir()),
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "load_s": round(load_s, 3),
                    "batch": batch,
                    "steps": args.steps,
                    "guidance": args.guidance,
                    "median_s": round(median, 3),
                    "images_per_s": round(batch / median, 2),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
