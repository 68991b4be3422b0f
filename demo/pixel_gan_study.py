"""Does the adversarial term sharpen the demo's reconstructions? `python -m demo.pixel_gan_study`.

Starts from the shipped model (read only, never rewritten) and fine-tunes a copy of its pixel decoder on the
demo's training split in stage ib-recon twice, with the same seed, steps and batches: once with L1 only (the
shipped recipe, continued) and once with L1 + the hinge-GAN term of the frozen-encoder discriminator
(adaptive weight, delayed start). Then it reconstructs the held-out split with each (encoder → compressor mode
→ feature decoder → pixel decoder) and reports per model:
- `l1`: mean |reconstruction − original| in [0, 1] pixel units;
- `encoder_distance`: ‖E(reconstruction) − E(original)‖² / ‖E(original)‖² in the frozen encoder's space;
- `sharpness`: the mean image-gradient magnitude of the reconstructions over the originals' (1 = as sharp).
It writes `report.json` and a side-by-side PNG (original | shipped | + L1 | + GAN) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from demo.grid import sample_grid, save_grid
from model.data import open_image_dataset
from model.pipeline import FAEPipeline
from model.training.config import TrainConfig
from model.training.runner import train


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Mean |∂x| + |∂y| per image (B×3×H×W in [0, 1])."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return dx + dy


@torch.no_grad()
def reconstruct(pipe: FAEPipeline, images: torch.Tensor) -> torch.Tensor:
    return pipe.decode_latents(pipe.encode_images(images))


@torch.no_grad()
def evaluate(
    pipe: FAEPipeline, images: torch.Tensor, batch: int = 64
) -> tuple[dict[str, float], torch.Tensor]:
    outputs, l1, distance, sharp = [], [], [], []
    for chunk in images.split(batch):
        out = reconstruct(pipe, chunk)
        outputs.append(out)
        l1.append((out - chunk).abs().mean(dim=(1, 2, 3)))
        real, fake = pipe.encoder(chunk), pipe.encoder(out)
        distance.append((fake - real).pow(2).sum(dim=(1, 2)) / real.pow(2).sum(dim=(1, 2)))
        sharp.append(gradient_magnitude(out) / gradient_magnitude(chunk).clamp_min(1e-6))
    metrics = {
        "l1": float(torch.cat(l1).mean()),
        "encoder_distance": float(torch.cat(distance).mean()),
        "sharpness": float(torch.cat(sharp).median()),
    }
    return metrics, torch.cat(outputs)


def fine_tune(args: argparse.Namespace, name: str, adversarial_weight: float) -> tuple[Path, dict[str, Any]]:
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=0,
        checkpoint_every=args.steps,
        perceptual_weight=0.0,  # the shipped recipe's; the GAN run differs only by its adversarial term
        adversarial_weight=adversarial_weight,
        adversarial_start=args.adversarial_start,
    )
    tic = time.perf_counter()
    report = train(
        data=args.data / "train",
        out_dir=args.out / name,
        model_dir=args.model,
        stage="ib-recon",
        config=config,
        cache_dir=args.cache_dir or args.out / "cache",
        show_progress=False,
        device="cpu",
    )
    stage = report["stages"]["ib-recon"]
    return args.out / name, {**stage, "wall_s": round(time.perf_counter() - tic, 1)}


def to_pil(image: torch.Tensor) -> PIL.Image.Image:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(array)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.pixel_gan_study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, default=Path("models/fae-demo"))
    parser.add_argument("--data", type=Path, default=Path("var/data/emoji"), help="from demo.prepare_data")
    parser.add_argument("--out", type=Path, default=Path("var/pixel-gan-study"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--adversarial-start", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default OUT/cache), shareable")
    parser.add_argument("--heldout", type=int, help="evaluate on every k-th held-out image to keep this many")
    parser.add_argument("--picture", type=Path, help="also write the side-by-side PNG here")
    parser.add_argument("--shown", type=int, default=8, help="held-out images in the picture")
    args = parser.parse_args(argv)

    heldout = open_image_dataset(args.data / "heldout")
    shipped = FAEPipeline.from_pretrained(str(args.model))
    stride = max(1, len(heldout) // args.heldout) if args.heldout else 1
    chosen = list(range(0, len(heldout), stride))[: args.heldout]
    images = torch.stack([heldout.load(i, shipped.image_size) for i in chosen]).float() / 255.0
    runs = {"l1": fine_tune(args, "l1", 0.0), "gan": fine_tune(args, "gan", 0.75)}
    report: dict[str, Any] = {
        "heldout_images": len(chosen),
        "steps": args.steps,
        "adversarial_start": args.adversarial_start,
        "batch_size": args.batch_size,
        "runs": {},
    }
    reconstructions = {}
    for name, pipe in [("shipped", shipped)] + [
        (name, FAEPipeline.from_pretrained(str(path))) for name, (path, _) in runs.items()
    ]:
        pipe.set_progress_bar_config(disable=True)
        metrics, reconstructions[name] = evaluate(pipe, images)
        report["runs"][name] = {**metrics, **({"training": runs[name][1]} if name in runs else {})}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    step = max(1, len(chosen) // args.shown)
    cells, captions = [], []
    for i in range(0, step * args.shown, step):
        for name, caption in (
            ("original", "held-out original"),
            ("shipped", "shipped decoder"),
            ("l1", f"+{args.steps} steps L1"),
            ("gan", f"+{args.steps} steps L1+GAN"),
        ):
            cells.append(to_pil(images[i] if name == "original" else reconstructions[name][i]))
            captions.append(caption)
    grid = sample_grid(cells, captions, columns=4, cell=128, caption_lines=1)
    for path in filter(None, (args.out / "side_by_side.png", args.picture)):
        save_grid(path, grid)
    print(json.dumps(report["runs"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
