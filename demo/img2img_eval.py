"""Image-to-image on a demo model, measured: how far outputs move from their inputs as strength grows (in the
frozen encoder's feature space, cosine distance of mean-pooled tokens as demo/evaluate.py uses, and in pixels),
reconstruction error (strength 0), and whether a prompt naming something else pulls the output towards it.

`benchmarks/bench_img2img.py` runs it on the prepared emoji data (held-out vs training images) and
`tests/demo/test_img2img_demo.py` on the shipped model's own generations, with margins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

from demo.eval_inputs import embed
from demo.feature_stats import l2_normalize


@dataclass(frozen=True)
class I2ISettings:
    steps: int = 25
    guidance: float = 4.0
    seed: int = 0  # image i uses seed + i


def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """B×3×H×W in [0, 1] → PIL images (as a user would upload them)."""
    array = (images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return [PIL.Image.fromarray(a) for a in array]


@torch.no_grad()
def img2img(
    pipe: Any,
    images: Sequence[PIL.Image.Image],
    prompts: Sequence[str],
    strength: float,
    settings: I2ISettings,
) -> torch.Tensor:
    """One output per (image, prompt), all denoised together by the step-level batcher (one job per image, as
    the worker's engine runs them); strength 0 is reconstruction. B×3×H×W in [0, 1] on the CPU."""
    from model.batching import DenoisingBatcher, DenoisingJob

    if strength == 0.0:
        return pipe.reconstruct(list(images)).float().cpu()
    batcher = DenoisingBatcher(pipe, max_batch_size=len(images))
    for index, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        samples = pipe.prepare_samples(
            prompt=prompt,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            seed=settings.seed + index,
            key=index,
            image=image,
            strength=strength,
        )
        batcher.add(DenoisingJob(index, samples))
    results = {result.key: result.images for result in batcher.run_until_idle()}
    return torch.cat([results[i] for i in range(len(images))]).float().cpu()


def pixels_at(images: Sequence[PIL.Image.Image], size: int) -> torch.Tensor:
    """Inputs at the model's output size, B×3×S×S in [0, 1] (for pixel distances)."""
    rows = [
        torch.from_numpy(
            np.asarray(image.convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC), np.float32)
            / 255.0
        ).permute(2, 0, 1)
        for image in images
    ]
    return torch.stack(rows)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance between paired feature rows."""
    return 1.0 - np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


@torch.no_grad()
def token_distances(encoder: Any, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per pair: the mean cosine distance between the encoder's patch tokens at the same grid cell (the
    feature map, where mean pooling would keep only what is in the image, not where)."""
    ta, tb = encoder(a.to(encoder.device)).float(), encoder(b.to(encoder.device)).float()
    return (1.0 - torch.nn.functional.cosine_similarity(ta, tb, dim=-1)).mean(dim=1).cpu().numpy()


def distances(pipe: Any, inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, float]:
    """Mean distances between paired inputs and outputs: in the frozen encoder's space, cosine of mean-pooled
    tokens (demo/evaluate.py's features) and per token; in pixels, RMSE on the [0, 1] scale."""
    pooled = cosine_distances(embed(pipe.encoder, inputs), embed(pipe.encoder, outputs))
    tokens = token_distances(pipe.encoder, inputs, outputs)
    rmse = ((inputs - outputs) ** 2).mean(dim=(1, 2, 3)).sqrt()
    return {
        "feature_pooled": float(pooled.mean()),
        "feature_tokens": float(tokens.mean()),
        "pixel_rmse": float(rmse.mean()),
    }


def strength_sweep(
    pipe: Any,
    images: Sequence[PIL.Image.Image],
    prompts: Sequence[str],
    strengths: Sequence[float],
    settings: I2ISettings,
) -> tuple[list[dict[str, float]], dict[float, torch.Tensor]]:
    """Per strength: the mean distances of outputs (each with its own prompt) to their inputs; the outputs."""
    inputs = pixels_at(images, pipe.image_size)
    rows, outputs = [], {}
    for strength in strengths:
        outputs[strength] = img2img(pipe, images, prompts, strength, settings)
        rows.append({"strength": strength, **distances(pipe, inputs, outputs[strength])})
    return rows, outputs


def steering(
    pipe: Any,
    images: Sequence[PIL.Image.Image],
    own_prompts: Sequence[str],
    target_prompts: Sequence[str],
    targets: np.ndarray,
    strength: float,
    settings: I2ISettings,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Outputs at `strength` with the image's own prompt and with a target prompt, against `targets` (one
    reference feature row per image for its target, e.g. the target emoji's real image): how close each output
    gets to its target (cosine distance), and how often it gets closer with the target prompt than with its own;
    also both outputs' features (for retrieval)."""
    own = embed(pipe.encoder, img2img(pipe, images, own_prompts, strength, settings))
    moved = embed(pipe.encoder, img2img(pipe, images, target_prompts, strength, settings))
    own_d, moved_d = cosine_distances(own, targets), cosine_distances(moved, targets)
    scores = {
        "strength": strength,
        "to_target_with_own_prompt": float(own_d.mean()),
        "to_target_with_target_prompt": float(moved_d.mean()),
        "closer_with_target_prompt": float(np.mean(moved_d < own_d)),
    }
    return scores, own, moved


def comparison_grid(
    inputs: torch.Tensor, rows: Sequence[torch.Tensor], labels: Sequence[str]
) -> PIL.Image.Image:
    """Inputs in the top row, one row per strength below, each row labelled on the left."""
    from PIL import ImageDraw

    size = inputs.shape[-1]
    label_w, pad = 64, 2
    columns = inputs.shape[0]
    all_rows = [inputs, *rows]
    names = ["input", *labels]
    width = label_w + columns * (size + pad)
    canvas = PIL.Image.new("RGB", (width, len(all_rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, name) in enumerate(zip(all_rows, names, strict=True)):
        y = r * (size + pad)
        draw.text((4, y + size // 2 - 6), name, fill="black")
        for c, image in enumerate(to_pil(row)):
            canvas.paste(image, (label_w + c * (size + pad), y))
    return canvas
