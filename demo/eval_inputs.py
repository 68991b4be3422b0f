"""What the evaluation measures on: the dataset manifest, the model's preset, encoder features, generated images."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

REQUIRED_FIELDS = ("file", "caption", "name", "category", "style", "split")
GENERATOR_CLASSES = {"mmdit": "MMDiT", "lightning-dit": "LightningDiT"}


class EvaluationError(RuntimeError):
    """The model or the data cannot be evaluated; the message says why."""


@dataclass(frozen=True)
class EvalSettings:
    n: int = 200  # prompts (held-out captions), one image each
    steps: int = 25
    guidance: float = 3.0
    guidance_schedule: str = "constant"
    seed: int = 0  # prompt selection and image i's noise (seed + i)
    batch_size: int = 32
    grid_count: int = 16


def read_manifest(data_dir: Path) -> list[dict[str, Any]]:
    """The entries of a `demo.prepare_data` folder's manifest.jsonl, checked (fields, files, both splits)."""
    path = Path(data_dir) / "manifest.jsonl"
    if not path.is_file():
        raise EvaluationError(
            f"{path} is missing: prepare the data with `python -m demo.prepare_data --out {data_dir}`"
        )
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise EvaluationError(f"{path}:{number} is not JSON ({exc})") from exc
        missing = [key for key in REQUIRED_FIELDS if not isinstance(entry.get(key), str)]
        if missing:
            raise EvaluationError(f"{path}:{number} lacks {', '.join(missing)}")
        if not (Path(data_dir) / entry["file"]).is_file():
            raise EvaluationError(f"{path}:{number}: {entry['file']} does not exist in {data_dir}")
        entries.append(entry)
    for split in ("train", "heldout"):
        if sum(e["split"] == split for e in entries) < 2:
            raise EvaluationError(
                f"{path} has fewer than 2 {split!r} images; the evaluation needs both splits"
            )
    return entries


def infer_preset(pipe: Any) -> str:
    """The preset whose generator, decoders and compressor have this pipeline's shapes."""
    from model.presets import PRESETS

    matches = []
    for name, cfg in PRESETS.items():
        generator = dict(cfg["generator"])
        if type(pipe.generator).__name__ != GENERATOR_CLASSES[generator.pop("kind")]:
            continue
        parts = [(pipe.generator, generator)]
        parts += [
            (getattr(pipe, key), cfg[key]) for key in ("feature_decoder", "pixel_decoder", "compressor")
        ]
        if all(
            module is not None and all(module.config.get(k) == v for k, v in want.items())
            for module, want in parts
        ):
            matches.append(name)
    if len(matches) != 1:
        found = f"it matches {', '.join(matches)}" if matches else "it matches no preset"
        raise EvaluationError(f"cannot tell the model's preset ({found}): pass --random-preset NAME")
    return matches[0]


def progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Float B×3×H×W images in [0, 1] -> mean-pooled patch tokens B×D (float64), in batches."""
    chunks = []
    for chunk in images.split(batch_size):
        tokens = encoder(chunk.to(device=encoder.device, dtype=torch.float32))
        chunks.append(tokens.float().mean(1).cpu().numpy().astype(np.float64))
    return np.concatenate(chunks)


def real_features(
    encoder: torch.nn.Module, data_dir: Path, entries: Sequence[dict[str, Any]], size: int, batch_size: int
) -> np.ndarray:
    """Features of the dataset's images, decoded and resized exactly as the training loader does."""
    from model.data import image_to_tensor

    chunks = []
    bar = progress_bar(len(entries), "real image features")
    for start in range(0, len(entries), batch_size):
        batch = []
        for entry in entries[start : start + batch_size]:
            with PIL.Image.open(Path(data_dir) / entry["file"]) as image:
                batch.append(image_to_tensor(image, size))
        chunks.append(embed(encoder, torch.stack(batch).float() / 255.0))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(chunks)


def generate(
    pipe: Any, prompts: Sequence[str], seeds: Sequence[int], settings: EvalSettings, desc: str
) -> torch.Tensor:
    """One image per prompt (image i from seed i), B×3×H×W in [0, 1] on the CPU."""
    out = []
    bar = progress_bar(len(prompts), desc)
    for start in range(0, len(prompts), settings.batch_size):
        stop = min(start + settings.batch_size, len(prompts))
        result = pipe(
            prompt=list(prompts[start:stop]),
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            guidance_schedule=settings.guidance_schedule,
            seed=list(seeds[start:stop]),
            output_type="pt",
        )
        out.append(result.images.float().cpu())
        bar.update(stop - start)
    bar.close()
    return torch.cat(out)
