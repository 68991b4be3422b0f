"""Pixel decoder: a ViT (MAE-decoder style) from frozen-encoder features to RGB, one patch per token."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .errors import InvalidInputError
from .layers import Attention, GeluMlp, register_position_table, sincos_2d


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = GeluMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PixelDecoder(ModelMixin, ConfigMixin):
    """Features B×N×D (N = grid²) → images B×3×(grid·patch)×(grid·patch) in [-1, 1] (not clamped).

    Each token predicts its own patch, so a briefly trained decoder shows seams between patches. With
    `refine_channels` > 0 the tokens predict that many channels per pixel instead, and two 3×3 convolutions
    over the whole image (which see across patch borders) turn them into RGB; 0 (the paper) is the plain head.
    `position_table_parameter` keeps the fixed sin-cos table as a frozen parameter, as RAE's decoder does.
    """

    @register_to_config
    def __init__(
        self,
        feature_dim: int = 1536,
        grid_size: int = 16,
        patch_size: int = 16,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        out_channels: int = 3,
        refine_channels: int = 0,
        position_table_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(feature_dim, hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        pos = torch.cat([torch.zeros(1, hidden_size), sincos_2d(hidden_size, grid_size)])
        register_position_table(self, "pos_embed", pos[None], position_table_parameter)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(ViTBlock(hidden_size, num_heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        predicted = refine_channels or out_channels
        self.pred = nn.Linear(hidden_size, patch_size * patch_size * predicted)
        self.refine: nn.Module | None = None
        if refine_channels:
            self.refine = nn.Sequential(
                nn.Conv2d(refine_channels, refine_channels, 3, padding=1),
                nn.GELU(approximate="tanh"),
                nn.Conv2d(refine_channels, out_channels, 3, padding=1),
            )
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def image_size(self) -> int:
        return self.config.grid_size * self.config.patch_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n = cfg.grid_size**2
        if features.ndim != 3 or features.shape[1:] != (n, cfg.feature_dim):
            raise InvalidInputError(
                f"PixelDecoder expects features B×{n}×{cfg.feature_dim}, got {tuple(features.shape)}"
            )
        x = self.embed(features)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        patches = self.pred(self.norm(x)[:, 1:])  # B×N×(p·p·c)
        b, g, p, c = x.shape[0], cfg.grid_size, cfg.patch_size, cfg.refine_channels or cfg.out_channels
        image = patches.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)
        return image if self.refine is None else self.refine(image)
