"""A small randomly initialised ViT standing in for DINOv2 in tests and CPU demos."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

# diffusers finds a pipeline component's save/load methods by looking up ModelMixin in the module that
# defines the component's class (model_index.json names this module), so it must be importable from here.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from torch import nn

from model.encoders.frozen import resolve_options
from model.encoders.representation import RepresentationEncoder
from model.errors import InvalidInputError


class _Block(nn.Module):
    """Pre-norm transformer block (attention + GELU MLP)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(query, key, value)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TinyViTEncoder(RepresentationEncoder):
    """Random tiny ViT (patch embedding, learned positions, `depth` blocks, final LayerNorm).

    The same `seed` gives the same weights; they are saved with the pipeline like any ModelMixin.
    Inputs are normalised with mean = std = 0.5 and resized bicubically to `image_size`.
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_tiny_vit(image_size, patch_size, width, depth, num_heads)
        grid = image_size // patch_size
        self._register_normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        # A private RNG stream so that the weights depend on `seed` only, not on what ran before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
            self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
            self.blocks = nn.ModuleList(_Block(width, num_heads, mlp_ratio) for _ in range(depth))
            self.norm = nn.LayerNorm(width)
        self._freeze()

    @property
    def feature_dim(self) -> int:
        return self.config.width

    @property
    def grid_size(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, "tiny-vit")
        _check_tiny_vit(
            options["image_size"],
            options["patch_size"],
            options["width"],
            options["depth"],
            options["num_heads"],
        )
        return {
            "feature_dim": options["width"],
            "grid_size": options["image_size"] // options["patch_size"],
            "image_size": options["image_size"],
        }

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.pos_embed  # row-major grid
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def _check_tiny_vit(image_size: int, patch_size: int, width: int, depth: int, num_heads: int) -> None:
    if min(image_size, patch_size, width, num_heads) <= 0 or depth < 0:
        raise InvalidInputError(
            "tiny-vit image_size, patch_size, width and num_heads must be positive, depth >= 0"
        )
    if image_size % patch_size:
        raise InvalidInputError(
            f"tiny-vit image_size {image_size} must be a multiple of patch_size {patch_size}"
        )
    if width % num_heads:
        raise InvalidInputError(f"tiny-vit width {width} must be a multiple of num_heads {num_heads}")
