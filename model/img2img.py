"""Image-to-image from FAE latents: a user's image as pixels for the encoder, and the flow path's later start.

An input image is oriented by its EXIF tag, composited on white where it is transparent, reduced with PIL to at
most twice the frozen encoder's input side (bounding memory whatever its size), and handed to the encoder, whose
own `preprocess` resizes and normalises it (model/encoders/representation.py). Its latent (the compressor's
posterior mean, standardised like training latents) re-enters the flow path at t = strength:
x_t = (1 − t)·x + t·ε, with ε drawn from the job's seed exactly as plain generation draws its noise, and is
denoised over the sub-grid of the scheduler's (shifted) timesteps that starts at t = strength, with about
`steps · strength` steps (in the unshifted variable). Strength 1 is plain generation, bit for bit; strength 0
is encode and decode only (reconstruction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from .data import to_rgb
from .errors import InvalidInputError
from .scheduling import FlowMatchingScheduler, shift_timesteps

# Pixels of an input image the model stack decodes at most (the gateway's limit is usually lower).
MAX_INPUT_PIXELS = 4096 * 4096


def prepare_input_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, upright per its EXIF orientation, transparency composited on white."""
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise InvalidInputError(f"the input image is {width}x{height}; at most {MAX_INPUT_PIXELS} pixels")
    return to_rgb(image)  # the conversion training images go through too


def images_to_tensor(images: Sequence[PIL.Image.Image], encoder_size: int) -> torch.Tensor:
    """Prepared images → one float B×3×S×S tensor in [0, 1] for the encoder (which resizes and normalises
    itself; this only brings every image to one size, reducing large ones with PIL first)."""
    if not images:
        raise InvalidInputError("give at least one image")
    side = 2 * encoder_size
    rows = []
    for image in images:
        image = prepare_input_image(image)
        if image.size != (side, side):
            image = image.resize((side, side), PIL.Image.Resampling.BICUBIC, reducing_gap=3.0)
        rows.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(rows)


def check_strength(strength: float) -> float:
    if not isinstance(strength, int | float) or isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
        raise InvalidInputError(f"strength must be a number from 0 to 1, got {strength!r}")
    return float(strength)


def _unshift(t: float, shift: float) -> float:
    """The inverse of `shift_timesteps`: the unshifted u with shift(u) = t."""
    return t / (shift - (shift - 1.0) * t)


def steps_from(scheduler: FlowMatchingScheduler, num_steps: int, strength: float) -> int:
    """How many of `num_steps` an image started at t = strength runs (at least 1)."""
    if strength >= 1.0:
        return num_steps
    u = _unshift(strength, scheduler.config.shift)
    return max(1, math.ceil(num_steps * u - 1e-9))


def start_grid(scheduler: FlowMatchingScheduler, steps: int, start_t: float) -> list[float]:
    """`steps` + 1 decreasing timesteps from `start_t` to 0, spaced like the scheduler's own (float64)."""
    if start_t >= 1.0:
        return scheduler.timesteps(steps).double().tolist()
    u = _unshift(start_t, scheduler.config.shift)
    base = torch.linspace(u, 0.0, steps + 1, dtype=torch.float64)
    grid = shift_timesteps(base, scheduler.config.shift).to(torch.float32).double().tolist()
    grid[0] = float(torch.tensor(start_t, dtype=torch.float32))  # exactly where the latent was noised to
    return grid


def noised(latent: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """The flow path's point at t: (1 − t)·x + t·ε."""
    return FlowMatchingScheduler.interpolate(
        latent.to(noise.dtype), noise, torch.tensor([t]).to(noise.device)
    )
