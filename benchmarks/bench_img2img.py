"""Image-to-image on the shipped demo model (`models/fae-demo`), measured on the prepared emoji data:
`python -m benchmarks.bench_img2img --data var/data/emoji` (prepare it with `python -m demo.prepare_data --out
var/data/emoji`, demo/README.md).

Inputs: held-out emoji (never seen in training) and as many training ones, each with its own caption as the
prompt. Reported: distance of the outputs to their inputs per strength (frozen-encoder features and pixels),
reconstruction error (strength 0) on held-out vs training images, and at strength 0.6 whether a prompt naming an
emoji of another category pulls the output towards it (its real image's features, and nearest-real retrieval of
the target's category over every real image, as demo/evaluate.py retrieves). Writes the JSON report and the
README's picture (inputs in the top row, strengths 0 / 0.3 / 0.6 / 1.0 below).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from demo.eval_inputs import embed, read_manifest, real_features
from demo.feature_stats import l2_normalize, nearest_neighbors
from demo.img2img_eval import I2ISettings, comparison_grid, pixels_at, steering, strength_sweep
from model.repository import default_model_dir, load_pipeline

STRENGTHS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)
PICTURE_STRENGTHS = (0.0, 0.3, 0.6, 1.0)
# Target prompts for the steering check: training emoji of distinct categories (name as in the captions).
TARGETS = ("red apple", "grinning face", "soccer ball", "crown", "penguin", "fire")


def load(data: Path, entries: list[dict]) -> list[PIL.Image.Image]:
    out = []
    for entry in entries:
        with PIL.Image.open(data / entry["file"]) as image:
            out.append(image.convert("RGB"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_img2img", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=Path("var/data/emoji"))
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped demo model")
    parser.add_argument("--n", type=int, default=48, help="held-out images (and as many training ones)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument("--picture", type=Path, default=None, help="PNG: inputs over strengths 0/0.3/0.6/1")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pipe = load_pipeline(args.model, device="cpu")
    settings = I2ISettings(args.steps, args.guidance, args.seed)
    entries = read_manifest(args.data)
    rng = np.random.default_rng(args.seed)
    by_split = {s: [e for e in entries if e["split"] == s] for s in ("train", "heldout")}
    heldout = [by_split["heldout"][i] for i in rng.choice(len(by_split["heldout"]), args.n, replace=False)]
    train = [by_split["train"][i] for i in rng.choice(len(by_split["train"]), args.n, replace=False)]
    images = load(args.data, heldout)
    prompts = [e["caption"] for e in heldout]

    sweep, outputs = strength_sweep(pipe, images, prompts, STRENGTHS, settings)
    train_recon, _ = strength_sweep(
        pipe, load(args.data, train), [e["caption"] for e in train], (0.0,), settings
    )

    # Steering: each held-out image gets a target emoji of another category; references are the target's real
    # image (its features) and every real image (nearest-real retrieval of the target's category).
    named = {e["name"]: e for e in by_split["train"] if e["style"] == "noto"}
    targets = [named[t] for t in TARGETS]
    chosen = [
        next(t for t in targets[i % len(targets) :] + targets if t["category"] != e["category"])
        for i, e in enumerate(heldout)
    ]
    target_prompts = [f"{t['name']}, {e['style']} style" for t, e in zip(chosen, heldout, strict=True)]
    target_features = embed(pipe.encoder, pixels_at(load(args.data, chosen), pipe.encoder.image_size))
    steer, own, moved = steering(pipe, images, prompts, target_prompts, target_features, 0.6, settings)
    pool = real_features(pipe.encoder, args.data, entries, pipe.encoder.image_size, 64)
    wanted = [t["category"] for t in chosen]
    for name, features in (("own_prompt", own), ("target_prompt", moved)):
        index, _ = nearest_neighbors(l2_normalize(features), l2_normalize(pool))
        steer[f"nearest_real_is_target_category_{name}"] = float(
            np.mean([entries[i]["category"] == w for i, w in zip(index, wanted, strict=True)])
        )

    report = {
        "model": str(args.model or default_model_dir()),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "n_heldout": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "sweep_heldout": sweep,
        "reconstruction": {"heldout": sweep[0], "train": train_recon[0]},
        "steering": steer,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.picture:
        columns = 8
        inputs = pixels_at(images[:columns], pipe.image_size)
        rows = [outputs[s][:columns] for s in PICTURE_STRENGTHS]
        labels = [f"s = {s:g}" for s in PICTURE_STRENGTHS]
        grid = comparison_grid(inputs, rows, labels)
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        grid.resize((grid.width * 2, grid.height * 2), PIL.Image.Resampling.NEAREST).save(args.picture)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
