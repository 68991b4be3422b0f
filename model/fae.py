"""The Feature Auto-Encoder: a one-attention-layer compressor and a 6-layer feature decoder.

The compressor maps frozen-encoder patch features (B×N×D) to a diagonal Gaussian over a small latent
(B×C×g×g, C = 32 in the paper); the feature decoder maps a latent back to the encoder's feature space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .errors import InvalidInputError
from .layers import (
    Attention,
    RMSNorm,
    Rope2D,
    SwiGLU,
    grid_to_tokens,
    register_position_table,
    sincos_2d,
    tokens_to_grid,
)


@dataclass
class DiagonalGaussian:
    mean: torch.Tensor  # B×C×g×g
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per sample, summed over latent elements."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


def _check_tokens(features: torch.Tensor, num_tokens: int, dim: int, what: str) -> None:
    if features.ndim != 3 or features.shape[1] != num_tokens or features.shape[2] != dim:
        raise InvalidInputError(
            f"{what} expects features of shape B×{num_tokens}×{dim}, got {tuple(features.shape)}"
        )


class FAEEncoder(ModelMixin, ConfigMixin):
    """Single-attention encoder: self-attention with a skip, an activation and one linear head to (μ, log σ²).

    `head_input` is where the head reads. "features": the attention's output projection back to the feature
    width, plus the features (skip), i.e. a standard attention block. "attention": the concatenated heads
    (num_heads·head_dim = 6144 wide in the paper) with no output projection ("merged" into the head), plus
    the features projected to that width (the skip): the paper's Fig. 7 wiring as far as its 38.17M count
    tells it (the projection to 6144 has the output projection's size, and a 6144→64 head closes the gap).
    """

    @register_to_config
    def __init__(
        self,
        feature_dim: int = 1536,
        grid_size: int = 16,
        num_heads: int = 24,
        head_dim: int = 256,
        latent_channels: int = 32,
        logvar_clamp: float = 30.0,
        head_input: Literal["features", "attention"] = "features",
    ) -> None:
        super().__init__()
        if head_input not in ("features", "attention"):
            raise InvalidInputError(f"head_input must be 'features' or 'attention', got {head_input!r}")
        self.norm = nn.LayerNorm(feature_dim, eps=1e-6)
        self.attn = Attention(feature_dim, num_heads, head_dim=head_dim, qkv_bias=True)
        width = feature_dim
        if head_input == "attention":
            width = num_heads * head_dim
            self.attn.proj = nn.Identity()  # merged into the head
            self.skip = nn.Linear(feature_dim, width)
        self.act = nn.GELU(approximate="tanh")
        self.head = nn.Linear(width, 2 * latent_channels)

    def forward(self, features: torch.Tensor) -> DiagonalGaussian:
        cfg = self.config
        _check_tokens(features, cfg.grid_size**2, cfg.feature_dim, "FAEEncoder")
        skip = features if cfg.head_input == "features" else self.skip(features)
        h = skip + self.attn(self.norm(features))
        moments = tokens_to_grid(self.head(self.act(h)), cfg.grid_size)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-cfg.logvar_clamp, 20.0))


class FeatureDecoderBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class FeatureDecoder(ModelMixin, ConfigMixin):
    """Transformer (RoPE, RMSNorm, SwiGLU) from the latent back to the frozen encoder's feature space.

    The output passes an RMSNorm, so its scale starts near 1 per token. Encoders whose features are far from
    that scale (EfficientNet's stride-16 stage has an RMS near 7) would leave the decoder spending most of
    stage Ia growing the norm's gain, so stage Ia stores the training features' per-channel `feature_mean`
    and `feature_std` here and the decoder predicts standardised features that are mapped back with them.
    Unset (None), the output is used as it is.

    `position_table`: add a fixed 2-D sin-cos table (a frozen parameter, grid²×width) to the input tokens, on
    top of RoPE. The paper's 170.43M is this decoder plus exactly such a 256×1536 table; whether theirs is
    fixed or learned is not stated (fixed, as LightningDiT's, here).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        feature_dim: int = 1536,
        grid_size: int = 16,
        depth: int = 6,
        num_heads: int = 24,
        mlp_hidden: int = 4096,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        position_table: bool = False,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(latent_channels, feature_dim)
        if position_table:
            register_position_table(self, "pos_embed", sincos_2d(feature_dim, grid_size)[None], True)
        self.blocks = nn.ModuleList(
            FeatureDecoderBlock(feature_dim, num_heads, mlp_hidden) for _ in range(depth)
        )
        self.norm_out = RMSNorm(feature_dim)
        self.rope = Rope2D(grid_size, feature_dim // num_heads)
        self._register_feature_stats(feature_mean, feature_std)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if latents.ndim != 4 or latents.shape[1:] != (cfg.latent_channels, cfg.grid_size, cfg.grid_size):
            raise InvalidInputError(
                f"FeatureDecoder expects latents B×{cfg.latent_channels}×{cfg.grid_size}×{cfg.grid_size}, "
                f"got {tuple(latents.shape)}"
            )
        x = self.proj_in(grid_to_tokens(latents))
        if cfg.position_table:
            x = x + self.pos_embed.to(x.dtype)
        rope = self.rope.tables  # fp32: a bf16 decoder rotates in fp32 too
        for block in self.blocks:
            x = block(x, rope)
        x = self.norm_out(x)
        if self.output_std is None:
            return x
        # in float32: a bf16 mean near 7 would round every token of its channel by up to 1/32
        return (x.float() * self.output_std + self.output_mean).to(x.dtype)

    def set_feature_stats(self, mean: list[float], std: list[float]) -> None:
        """Store the per-channel statistics of the features this decoder learns to reproduce."""
        self._register_feature_stats(list(mean), list(std))
        self.register_to_config(feature_mean=list(mean), feature_std=list(std))

    def _register_feature_stats(self, mean: list[float] | None, std: list[float] | None) -> None:
        if (mean is None) != (std is None):
            raise InvalidInputError("FeatureDecoder needs both feature_mean and feature_std, or neither")
        dim = self.config.feature_dim
        if (
            mean is not None
            and std is not None
            and (
                len(mean) != dim
                or len(std) != dim
                or not all(math.isfinite(m) for m in mean)
                or not all(math.isfinite(s) and s > 0 for s in std)
            )
        ):
            raise InvalidInputError(
                f"feature statistics need {dim} finite means and {dim} finite positive stds"
            )
        # Buffers, not tensors built in forward: they follow .to() and stay put under CUDA-graph capture.
        # Not persistent: the config is their one saved copy. Built where the other buffers are (parameters
        # may sit on the meta device while from_pretrained loads them).
        device = self.rope.cos.device
        for name, values in (("output_mean", mean), ("output_std", std)):
            value = None if values is None else torch.tensor(values, dtype=torch.float32, device=device)
            self.register_buffer(name, value, persistent=False)
