"""Evaluate a text-to-image model on the emoji data: `python -m demo.evaluate --model DIR --data var/data/emoji
--out report.json`.

Everything is measured in one feature space: the mean over the patch tokens of the evaluated model's own frozen
encoder (`pipe.encoder`; for the `demo` preset EfficientNet-Lite0's stride-16 stage, 112-d), on images resized
to the model's size as in training. Generated images of the random model are embedded by the same encoder.

- Fréchet distance to the held-out real images, for the model, for a randomly initialised model of its preset,
  and two floors from real data only: `real_matched` (n training images vs the held-out images: the same
  sample sizes as the generated comparison, so the same small-sample bias) and `real_halves` (all real images
  split into two random halves).
- Prompt adherence: one image per held-out caption (up to n), nearest real image over all real images (train +
  held-out, cosine distance): how often its category, name and style match the prompt's, against chance (the
  share of real images with the prompt's label), against `majority` (the most common label's share among the
  prompts: what a model that makes one image for every prompt can reach) and against held-out real images
  used as queries (leave-one-out: what the feature space can do at best).
- Memorisation: cosine distance from each generated image to its nearest training image, beside the same for
  held-out real images; `generated_below_p5` is the share of generated images closer to a training image than
  95% of held-out real images are (about 0.05 when nothing is copied).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demo.eval_inputs import (
    EvalSettings,
    EvaluationError,
    embed,
    generate,
    infer_preset,
    read_manifest,
    real_features,
)
from demo.feature_stats import (
    chance_rate,
    distance_summary,
    frechet_distance,
    l2_normalize,
    majority_rate,
    match_rate,
    nearest_neighbors,
)
from demo.grid import sample_grid, save_grid

MATCH_FIELDS = ("category", "name", "style")

__all__ = [
    "EvalSettings",
    "EvaluationError",
    "evaluate",
    "format_table",
    "infer_preset",
    "main",
    "read_manifest",
]


def retrieval(
    queries: np.ndarray,
    query_entries: Sequence[dict[str, Any]],
    pool: np.ndarray,
    pool_entries: Sequence[dict[str, Any]],
    exclude: Sequence[int] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Match rates of each query's nearest pool image (cosine distance) per field, and the retrieved indices."""
    index, _ = nearest_neighbors(l2_normalize(queries), l2_normalize(pool), exclude)
    rates = {
        field: match_rate([q[field] for q in query_entries], [pool_entries[i][field] for i in index])
        for field in MATCH_FIELDS
    }
    return rates, index


def frechet_distances(
    trained: np.ndarray, random_model: np.ndarray, train: np.ndarray, heldout: np.ndarray, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    matched = rng.choice(len(train), min(len(trained), len(train)), replace=False)
    real = np.concatenate([train, heldout])
    shuffled = rng.permutation(len(real))
    half = len(real) // 2
    return {
        "trained": frechet_distance(trained, heldout),
        "random": frechet_distance(random_model, heldout),
        "real_matched": frechet_distance(train[matched], heldout),
        "real_halves": frechet_distance(real[shuffled[:half]], real[shuffled[half:]]),
    }


def memorization(
    generated: np.ndarray, train: np.ndarray, heldout: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Distances to the nearest training image, generated vs held-out real; also each generated image's
    nearest training image and distance."""
    train_unit = l2_normalize(train)
    nearest, generated_distance = nearest_neighbors(l2_normalize(generated), train_unit)
    _, heldout_distance = nearest_neighbors(l2_normalize(heldout), train_unit)
    threshold = float(np.percentile(heldout_distance, 5))
    summary = {
        "generated_to_train": distance_summary(generated_distance),
        "heldout_to_train": distance_summary(heldout_distance),
        "heldout_p5": threshold,
        "generated_below_p5": float((generated_distance < threshold).mean()),
    }
    return summary, nearest, generated_distance


def write_grid(
    path: Path,
    pipe: Any,
    captions: list[str],
    images: torch.Tensor,
    prompts: Sequence[str],
    settings: EvalSettings,
) -> None:
    """The grid of `prompts` when given (generated now), else of the first evaluation images."""
    from model.pipeline import to_output

    if prompts:
        captions = list(prompts)
        images = generate(pipe, captions, [settings.seed + i for i in range(len(captions))], settings, "grid")
    else:
        captions, images = captions[: settings.grid_count], images[: settings.grid_count]
    save_grid(path, sample_grid(to_output(images, "pil"), captions, columns=8))


def evaluate(
    model_dir: Path,
    data_dir: Path,
    settings: EvalSettings,
    random_preset: str | None = None,
    device: str = "cpu",
    grid_path: Path | None = None,
    grid_prompts: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from model.pipeline import FAEPipeline
    from model.repository import load_pipeline

    started = time.monotonic()
    entries = read_manifest(data_dir)
    pipe = load_pipeline(Path(model_dir), device=device)
    if pipe.condition_type != "text":
        raise EvaluationError(
            f"{model_dir} is a class-conditional model; this evaluation needs a text-to-image one"
        )
    if pipe.encoder is None:
        raise EvaluationError(
            f"{model_dir} has no encoder component: its feature space is what the evaluation uses"
        )
    preset = random_preset or infer_preset(pipe)
    encoder = pipe.encoder
    train = [e for e in entries if e["split"] == "train"]
    heldout = [e for e in entries if e["split"] == "heldout"]
    prompts = random.Random(settings.seed).sample(heldout, min(settings.n, len(heldout)))
    captions = [p["caption"] for p in prompts]
    seeds = [settings.seed + i for i in range(len(prompts))]
    log(
        f"{len(train)} training and {len(heldout)} held-out images; {len(prompts)} prompts; preset {preset!r}"
    )

    features = real_features(encoder, data_dir, train + heldout, pipe.image_size, settings.batch_size)
    train_features, heldout_features = features[: len(train)], features[len(train) :]
    generated = generate(pipe, captions, seeds, settings, "trained model")
    trained_features = embed(encoder, generated, settings.batch_size)
    random_pipe = FAEPipeline.from_preset(preset, seed=settings.seed).to(device)
    random_pipe.set_progress_bar_config(disable=True)
    random_images = generate(random_pipe, captions, seeds, settings, "random model")
    random_features = embed(encoder, random_images, settings.batch_size)
    del random_pipe

    pool = train + heldout
    trained_rates, retrieved = retrieval(trained_features, prompts, features, pool)
    random_rates, _ = retrieval(random_features, prompts, features, pool)
    own_index = [len(train) + i for i in range(len(heldout))]
    real_rates, _ = retrieval(heldout_features, heldout, features, pool, exclude=own_index)
    memo, nearest_train, train_distance = memorization(trained_features, train_features, heldout_features)
    if grid_path is not None:
        write_grid(grid_path, pipe, captions, generated, grid_prompts, settings)
        log(f"wrote the sample grid {grid_path}")

    return {
        "model": str(model_dir),
        "data": str(data_dir),
        "preset": preset,
        "device": device,
        "settings": asdict(settings),
        "feature_space": f"mean of the {encoder.num_tokens} patch tokens of the model's frozen encoder "
        f"({type(encoder).__name__}, {encoder.feature_dim}-d), images at {pipe.image_size} px",
        "counts": {"train": len(train), "heldout": len(heldout), "prompts": len(prompts)},
        "frechet_distance": frechet_distances(
            trained_features, random_features, train_features, heldout_features, settings.seed
        ),
        "prompt_adherence": {
            "trained": trained_rates,
            "random": random_rates,
            "chance": {f: chance_rate([p[f] for p in prompts], [e[f] for e in pool]) for f in MATCH_FIELDS},
            "majority": {f: majority_rate([p[f] for p in prompts]) for f in MATCH_FIELDS},
            "real_heldout": real_rates,
        },
        "memorization": memo,
        "samples": [
            {
                "prompt": p["caption"],
                "seed": seed,
                "retrieved": pool[r]["file"],
                "retrieved_caption": pool[r]["caption"],
                "nearest_train": train[t]["file"],
                "nearest_train_distance": float(d),
            }
            for p, seed, r, t, d in zip(prompts, seeds, retrieved, nearest_train, train_distance, strict=True)
        ],
        "seconds": round(time.monotonic() - started, 1),
    }


def format_table(report: dict[str, Any]) -> str:
    fd, adherence, memo = report["frechet_distance"], report["prompt_adherence"], report["memorization"]
    columns = ("trained", "random", "real_heldout", "chance", "majority")
    lines = [
        f"{'metric':32s} {'trained':>9s} {'random':>9s} {'real':>9s} {'chance':>9s} {'majority':>9s}",
        f"{'Fréchet distance (lower better)':32s} {fd['trained']:9.3f} {fd['random']:9.3f} "
        f"{fd['real_matched']:9.3f}  (real halves {fd['real_halves']:.3f})",
    ]
    for field in MATCH_FIELDS:
        row = " ".join(f"{adherence[key][field]:9.3f}" for key in columns)
        lines.append(f"{field + ' match (higher better)':32s} {row}")
    gen, held = memo["generated_to_train"], memo["heldout_to_train"]
    lines.append(
        f"nearest training image: median distance {gen['median']:.4f} generated vs {held['median']:.4f} "
        f"held-out real; {memo['generated_below_p5']:.1%} of generated images are closer than 95% of "
        "held-out real ones (about 5% when nothing is copied)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory (e.g. from `fae train`)")
    parser.add_argument("--data", type=Path, required=True, help="dataset from demo.prepare_data")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")
    defaults = EvalSettings()
    parser.add_argument("--n", type=int, default=defaults.n, help="held-out prompts, one image each")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    parser.add_argument(
        "--guidance-schedule", default=defaults.guidance_schedule, choices=["constant", "fae-three-part"]
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--random-preset", help="preset of the random baseline (default: inferred from the model)"
    )
    parser.add_argument("--grid", type=Path, help="write a sample grid PNG here")
    parser.add_argument("--grid-count", type=int, default=defaults.grid_count, help="images in the grid")
    parser.add_argument(
        "--grid-prompt",
        action="append",
        default=[],
        help="prompt for the grid (repeatable; default: evaluation prompts)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.n < 2 or not 1 <= args.batch_size <= 64 or args.grid_count < 1:
        parser.error("--n must be at least 2, --batch-size from 1 to 64, --grid-count at least 1")
    settings = EvalSettings(
        n=args.n,
        steps=args.steps,
        guidance=args.guidance,
        guidance_schedule=args.guidance_schedule,
        seed=args.seed,
        batch_size=args.batch_size,
        grid_count=args.grid_count,
    )
    from model.devices import resolve_device
    from model.errors import InvalidInputError, WeightsNotFoundError
    from model.io import write_bytes_atomically

    device = str(resolve_device(args.device))
    try:
        report = evaluate(
            args.model, args.data, settings, args.random_preset, device, args.grid, args.grid_prompt
        )
    except (EvaluationError, InvalidInputError, WeightsNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_bytes_atomically(args.out, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    print(format_table(report))
    print(f"wrote {args.out} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
