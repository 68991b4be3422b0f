"""Serving benchmark: chip ceiling, generator forward, end-to-end images/s, open-loop latency, start-up, correctness.

One command, one card, every ratio measured in the same run:

    python -m benchmarks.bench_serving --preset paper-imagenet --out benchmarks/results/h200.json   # GPU
    python -m benchmarks.bench_serving --smoke                                                       # CPU, seconds

Weights are random at the preset's real shapes: speed does not depend on their values. Needs only torch and
diffusers (plus this repository's model/), so it runs on a GPU machine with one carried wheel.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import FAEPipeline
from model.batching import DenoisingBatcher, DenoisingJob
from model.compiled import (
    BucketedForward,
    accelerate_pipeline,
    configure_compile_cache,
    example_generator_inputs,
    warm_accelerated,
)
from model.reference_flow import GaussianFlow
from model.repository import quiet_loading

from .peers import build_dit_peer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured dense matrix-product throughput (FLOP/s) of this chip: the ceiling every ratio refers to."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeat=10, warmup=3)
    return 2 * n**3 / seconds


def forward_flops(module: torch.nn.Module, args: tuple, kwargs: dict) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args, **kwargs)
    return counter.get_total_flops()


def bench_forward(
    pipe: FAEPipeline, batches: list[int], ceiling: float, repeat: int, graphs: bool
) -> list[dict]:
    rows = []
    device = pipe.device
    eager = pipe.generator
    compiled = BucketedForward(eager, buckets=batches, compile=True, cuda_graphs=False)
    graphed = None
    if graphs:  # the same compiled function, replayed as CUDA graphs
        graphed = BucketedForward(eager, buckets=batches, cuda_graphs=True, fn=compiled.fn)
    for batch in batches:
        args, kwargs = example_generator_inputs(pipe, batch)
        flops = forward_flops(eager, args, kwargs)
        row: dict[str, Any] = {"batch": batch, "gflop_per_forward": flops / 1e9}
        variants = [("eager", eager), ("compiled", compiled)] + ([("graphs", graphed)] if graphed else [])
        with torch.inference_mode():  # the mode the engine serves (and warm-up compiles) in
            reference = eager(*args, **kwargs).float()
            for name, fn in variants:
                seconds = timed(lambda fn=fn, a=args, k=kwargs: fn(*a, **k), device, repeat)
                out = fn(*args, **kwargs).float()
                row[f"{name}_ms"] = seconds * 1e3
                row[f"{name}_tflops"] = flops / seconds / 1e12
                row[f"{name}_of_ceiling"] = flops / seconds / ceiling
                row[f"{name}_rel_err"] = float((out - reference).norm() / reference.norm().clamp_min(1e-12))
                row[f"{name}_finite"] = bool(torch.isfinite(out).all())
        rows.append(row)
    return rows


def run_batcher(
    pipe: FAEPipeline, batcher: DenoisingBatcher, n_images: int, steps: int, scale: float
) -> float:
    """Seconds to generate n_images single-image jobs submitted together."""
    cond = {"class_labels": 1} if pipe.condition_type == "class" else {"prompt": "a photo"}
    for i in range(n_images):
        samples = pipe.prepare_samples(
            cond.get("prompt"), cond.get("class_labels"), 1, steps, scale, "constant", i, key=i
        )
        batcher.add(DenoisingJob(i, samples))
    start = time.perf_counter()
    batcher.run_until_idle()
    sync(pipe.device)
    return time.perf_counter() - start


def bench_end_to_end(
    pipe: FAEPipeline, fast: dict, batch: int, steps_list: list[int], repeat: int
) -> list[dict]:
    rows = []
    for steps in steps_list:
        for scale in (1.0, 2.5):
            row: dict[str, Any] = {"steps": steps, "cfg": scale != 1.0, "batch": batch}
            for name, batcher_of in (
                ("eager", lambda: DenoisingBatcher(pipe, max_batch_size=batch)),
                ("fast", lambda: _fast_batcher(pipe, fast, batch)),
            ):
                run_batcher(pipe, batcher_of(), 1, min(steps, 2), scale)  # warm-up
                one = min(run_batcher(pipe, batcher_of(), 1, steps, scale) for _ in range(repeat))
                many = min(
                    run_batcher(pipe, batcher_of(), batch, steps, scale) for _ in range(max(1, repeat // 2))
                )
                row[f"{name}_one_image_ms"] = one * 1e3
                row[f"{name}_images_per_s"] = batch / many
            row["speedup_one_image"] = row["eager_one_image_ms"] / row["fast_one_image_ms"]
            row["speedup_throughput"] = row["fast_images_per_s"] / row["eager_images_per_s"]
            rows.append(row)
    return rows


def _fast_batcher(pipe: FAEPipeline, fast: dict, batch: int) -> DenoisingBatcher:
    return DenoisingBatcher(
        pipe,
        fast["generator"],
        max_batch_size=batch,
        decoders=(fast["feature_decoder"], fast["pixel_decoder"]),
    )


def bench_arrivals(
    pipe: FAEPipeline, fast: dict, batch: int, steps: int, max_rate: float, n: int
) -> list[dict]:
    """Open loop: single-image CFG requests arrive as a Poisson process at fractions of the max throughput."""
    rows = []
    cond = {"class_labels": 1} if pipe.condition_type == "class" else {"prompt": "a photo"}
    for fraction in (0.5, 0.8):
        rate = fraction * max_rate
        rng = random.Random(0)
        arrivals, t = [], 0.0
        for _ in range(n):
            t += rng.expovariate(rate)
            arrivals.append(t)
        batcher = _fast_batcher(pipe, fast, batch)
        latencies, start, next_i = [], time.perf_counter(), 0
        submitted: dict[int, float] = {}
        while len(latencies) < n:
            now = time.perf_counter() - start
            while next_i < n and arrivals[next_i] <= now:
                samples = pipe.prepare_samples(
                    cond.get("prompt"),
                    cond.get("class_labels"),
                    1,
                    steps,
                    2.5,
                    "constant",
                    next_i,
                    key=next_i,
                )
                batcher.add(DenoisingJob(next_i, samples))
                submitted[next_i] = start + arrivals[next_i]
                next_i += 1
            if batcher.idle:
                time.sleep(max(0.0, min(0.001, arrivals[next_i] - now if next_i < n else 0.0)))
                continue
            for result in batcher.step():
                sync(pipe.device)
                latencies.append(time.perf_counter() - submitted[result.key])
        elapsed = time.perf_counter() - start
        latencies.sort()
        rows.append(
            {
                "offered_fraction_of_max": fraction,
                "offered_images_per_s": rate,
                "achieved_images_per_s": n / elapsed,
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "p99_ms": latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1e3,
            }
        )
    return rows


def bench_peer(device: torch.device, dtype: torch.dtype, steps: int, batch: int, smoke: bool) -> dict:
    peer = build_dit_peer(device, dtype, smoke=smoke)
    result: dict[str, Any] = {}
    for name in ("eager", "compiled"):
        if name == "compiled":
            peer.transformer = torch.compile(peer.transformer)

        def run(n: int, peer=peer) -> Any:
            return peer(class_labels=[1] * n, num_inference_steps=steps, guidance_scale=4.0, output_type="np")

        run(1)
        result[f"{name}_one_image_ms"] = timed(lambda run=run: run(1), device, repeat=2, warmup=0) * 1e3
        result[f"{name}_images_per_s"] = batch / timed(lambda run=run: run(batch), device, repeat=1, warmup=0)
    return result


def startup_seconds(model_dir: str, cache_dir: str, device: str, buckets: str) -> float:
    """A fresh process: load the model, compile and warm every bucket, save the compile cache (what a worker
    does before ready: worker/engine/loading.py)."""
    code = (
        "import sys, time; t=time.perf_counter();"
        "from model.compiled import configure_compile_cache, save_compile_cache;"
        f"configure_compile_cache({cache_dir!r});"
        "from model.repository import load_pipeline;"
        "from benchmarks.bench_serving import warm_pipeline;"
        f"p=load_pipeline({model_dir!r}, device={device!r});"
        f"warm_pipeline(p, [{buckets}]);"
        f"save_compile_cache({cache_dir!r});"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def warm_pipeline(pipe: FAEPipeline, buckets: list[int]) -> dict:
    pipe.generator.requires_grad_(False)
    fast = accelerate_pipeline(pipe, buckets=buckets)
    warm_accelerated(pipe, fast)
    return fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper-imagenet")
    parser.add_argument("--smoke", action="store_true", help="tiny preset on the CPU in seconds (CI)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,2,8,64,256")
    parser.add_argument("--steps", default="50,250")
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--arrivals", type=int, default=200)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: peer,startup,arrivals")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:  # every section, one shape each, so the CPU compiles little
        args.preset, args.batches, args.steps = "tiny", "4", "3"
        args.throughput_batch, args.arrivals = 4, 6
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    skip = set(filter(None, args.skip.split(",")))
    batches = [int(b) for b in args.batches.split(",")]
    steps_list = [int(s) for s in args.steps.split(",")]
    repeat = 3 if args.smoke else 10

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "dtype": str(dtype),
    }
    ceiling = matmul_ceiling(device, dtype, 8192 if device.type == "cuda" else 512)
    report["matmul_ceiling_tflops"] = ceiling / 1e12
    # Sampler-state precision: a 250-step ODE with a known exact velocity, generator in fp32 vs bf16, on this
    # device through the real StepBatcher (the state stays fp32 either way; bf16 should add no error).
    flow = GaussianFlow()
    report["state_error"] = {
        name: flow.ode_error(model_dtype, steps=250, device=device)
        for name, model_dtype in (("fp32_generator", torch.float32), ("bf16_generator", torch.bfloat16))
    }
    quiet_loading()
    # Everything below runs in the engine's serving mode: warm-up compiles for it (model/compiled.py).
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        configure_compile_cache(Path(tmp) / "compile-cache")
        pipe = FAEPipeline.from_preset(args.preset, seed=0).to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.generator.requires_grad_(False)  # serving: no autograd state (it would also force recompiles)
        for component in ("feature_decoder", "pixel_decoder", "compressor"):
            getattr(pipe, component).requires_grad_(False)
        report["forward"] = bench_forward(pipe, batches, ceiling, repeat, graphs=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        buckets = (
            [args.throughput_batch]
            if args.smoke
            else sorted({1, 2, 4, 8, 16, 32, 64, args.throughput_batch * 2})
        )
        fast = warm_pipeline(pipe, buckets)
        report["end_to_end"] = bench_end_to_end(
            pipe, fast, args.throughput_batch, steps_list, max(1, repeat // 3)
        )
        cfg_rows = [r for r in report["end_to_end"] if r["cfg"]]
        if "arrivals" not in skip and cfg_rows:
            max_rate = cfg_rows[0]["fast_images_per_s"]
            report["arrivals"] = bench_arrivals(
                pipe, fast, args.throughput_batch, steps_list[0], max_rate, args.arrivals
            )
        if device.type == "cuda":
            report["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if "peer" not in skip:
            report["dit_peer"] = bench_peer(device, dtype, steps_list[0], args.throughput_batch, args.smoke)
        if "startup" not in skip:
            model_dir = str(Path(tmp) / "model")
            pipe.save_pretrained(model_dir)
            cache = str(Path(tmp) / "startup-cache")
            bucket_list = ",".join(str(b) for b in buckets)
            report["startup_cold_s"] = startup_seconds(model_dir, cache, args.device, bucket_list)
            report["startup_warm_s"] = startup_seconds(model_dir, cache, args.device, bucket_list)
            report["startup_warm_over_cold"] = report["startup_warm_s"] / report["startup_cold_s"]
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    print(f"\n{report['device']}  torch {report['torch']}  preset {report['preset']}  {report['date']}")
    print(f"matmul ceiling: {report['matmul_ceiling_tflops']:.3f} TFLOP/s")
    errors = report["state_error"]
    print(
        f"250-step ODE relative error, fp32 state: generator fp32 {errors['fp32_generator']:.4f}, "
        f"bf16 {errors['bf16_generator']:.4f}"
    )
    print(
        "\ngenerator forward      batch   eager ms  compiled ms  graphs ms   best % of ceiling   max rel err"
    )
    for r in report["forward"]:
        best = max(v for k, v in r.items() if k.endswith("_of_ceiling"))
        err = max(v for k, v in r.items() if k.endswith("_rel_err"))
        graphs = f"{r['graphs_ms']:9.3f}" if "graphs_ms" in r else "        -"
        print(
            f"{'':22s} {r['batch']:5d} {r['eager_ms']:10.3f} {r['compiled_ms']:12.3f} {graphs}"
            f" {100 * best:18.1f}% {err:13.2e}"
        )
    print(
        "\nend to end       steps  cfg   eager 1-img ms  fast 1-img ms  speedup   eager img/s  fast img/s  speedup"
    )
    for r in report["end_to_end"]:
        print(
            f"{'':16s} {r['steps']:5d}  {'yes' if r['cfg'] else 'no ':3s} {r['eager_one_image_ms']:15.1f}"
            f" {r['fast_one_image_ms']:14.1f} {r['speedup_one_image']:8.2f}x {r['eager_images_per_s']:12.2f}"
            f" {r['fast_images_per_s']:11.2f} {r['speedup_throughput']:7.2f}x"
        )
    for r in report.get("arrivals", []):
        print(
            f"arrivals at {100 * r['offered_fraction_of_max']:.0f}% of max: p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms, {r['achieved_images_per_s']:.2f} img/s"
        )
    if "dit_peer" in report:
        p = report["dit_peer"]
        print(
            f"diffusers DiTPipeline peer: 1 image {p['eager_one_image_ms']:.1f} ms eager, "
            f"{p['compiled_one_image_ms']:.1f} ms compiled; {p['compiled_images_per_s']:.2f} img/s compiled"
        )
    if "startup_cold_s" in report:
        print(
            f"worker start-up: cold cache {report['startup_cold_s']:.1f} s, warm {report['startup_warm_s']:.1f} s"
            f" (warm/cold {report['startup_warm_over_cold']:.2f})"
        )
    if "peak_gpu_memory_gib" in report:
        print(f"peak GPU memory: {report['peak_gpu_memory_gib']:.2f} GiB")


if __name__ == "__main__":
    sys.exit(main())
