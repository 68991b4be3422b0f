"""The frozen representation-encoder interface: RGB images in [0, 1] in, patch tokens B×N×D out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from model.encoders.frozen import FrozenComponent
from model.errors import InvalidInputError

# Values a little outside [0, 1] (resampling overshoot, float noise) pass; [-1, 1] or [0, 255] images do not.
RANGE_TOLERANCE = 0.05

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_images(images: object) -> torch.Tensor:
    """Raise InvalidInputError unless `images` is a non-empty float B×3×H×W tensor with values in [0, 1]."""
    expected = "a float tensor of shape B×3×H×W (RGB, channels first) with values in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"images must be {expected}; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"images must be {expected}; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InvalidInputError(
            f"images must be {expected}; got dtype {images.dtype} (convert with images.float() / 255)"
        )
    if images.numel() == 0:
        raise InvalidInputError(f"images must be {expected}; got an empty tensor {tuple(images.shape)}")
    if images.device.type != "meta":
        low, high = torch.aminmax(images.detach())
        low_value, high_value = float(low), float(high)
        # Written so that NaN fails too.
        if not (low_value >= -RANGE_TOLERANCE and high_value <= 1 + RANGE_TOLERANCE):
            raise InvalidInputError(
                f"images must be {expected}; got values from {low_value:.4g} to {high_value:.4g} "
                "(map [-1, 1] images with (x + 1) / 2 and [0, 255] ones with x / 255)"
            )
    return images


class RepresentationEncoder(FrozenComponent):
    """A frozen pretrained image encoder.

    `forward(images)` takes float B×3×H×W images in [0, 1] of any size, resizes them to `image_size`
    (squashing non-square inputs), normalises with the encoder's own mean/std and returns patch tokens
    B×N×D with N = grid_size**2 in row-major grid order and D = feature_dim. Parameters never need grad and
    the module stays in eval mode. Subclasses call `_register_normalization` and `_freeze` in `__init__`
    and implement `encode_preprocessed`, the three properties and `describe`.
    """

    resize_mode = "bicubic"

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    @property
    def grid_size(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        """feature_dim, grid_size and image_size for `config` (the init options) without loading weights."""
        raise NotImplementedError

    def _register_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # Buffers so that .to(device) moves them; not persistent: they are constants, not weights.
        self.register_buffer(
            "pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Validate, resize to image_size × image_size and normalise; float32 B×3×S×S."""
        images = validate_images(images).float()
        size = self.image_size
        if images.shape[-2:] != (size, size):
            # Antialiased like PIL's resize, so that downscaling 256 → 224 does not alias.
            images = F.interpolate(
                images, size=(size, size), mode=self.resize_mode, align_corners=False, antialias=True
            )
            images = images.clamp(0.0, 1.0)  # bicubic overshoots; a uint8 pipeline would clip here too
        return (images - self.pixel_mean.float()) / self.pixel_std.float()

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens B×N×D from preprocessed B×3×S×S pixels."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.dtype)
        tokens = self.encode_preprocessed(pixels)
        expected = (pixels.shape[0], self.num_tokens, self.feature_dim)
        if tuple(tokens.shape) != expected:
            raise RuntimeError(
                f"{type(self).__name__} produced tokens of shape {tuple(tokens.shape)}, not {expected}"
            )
        return tokens
