"""LightningDiT: a class-conditional DiT with adaLN-Zero, SwiGLU, 2-D RoPE and RMSNorm, patch 1 on the latent grid.

The timestep is per sample (B values), so one batch may hold samples at different denoising steps.
Convention: t = 1 is pure noise, t = 0 is data; the model predicts the velocity noise − data.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .adapters import route_adapter_slots
from .errors import InvalidInputError
from .layers import (
    Attention,
    RMSNorm,
    Rope2D,
    SwiGLU,
    TimestepEmbedder,
    grid_to_tokens,
    modulate,
    register_position_table,
    sincos_2d,
    tokens_to_grid,
)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_hidden: int, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = RMSNorm(hidden)
        self.attn = Attention(hidden, num_heads, qkv_bias=True, qk_norm=qk_norm)
        self.norm2 = RMSNorm(hidden)
        self.mlp = SwiGLU(hidden, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden)
        self.linear = nn.Linear(hidden, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def zero_init_adaln(modulations: list[nn.Sequential], final: FinalLayer) -> None:
    """adaLN-Zero: every residual branch and the output start at zero, so the untrained model outputs zero."""
    for modulation in modulations:
        nn.init.zeros_(modulation[-1].weight)
        nn.init.zeros_(modulation[-1].bias)
    nn.init.zeros_(final.adaLN_modulation[-1].weight)
    nn.init.zeros_(final.adaLN_modulation[-1].bias)
    nn.init.zeros_(final.linear.weight)
    nn.init.zeros_(final.linear.bias)


class LightningDiT(ModelMixin, ConfigMixin):
    """`position_table_parameter`: keep the fixed sin-cos position table as a frozen parameter, as LightningDiT
    does (the paper's 675.26M counts it); False (models saved before the option) keeps it a buffer."""

    condition_type = "class"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 32,
        grid_size: int = 16,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        qk_norm: bool = False,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        position_table_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # Index num_classes is the "no class" embedding used by classifier-free guidance.
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        mlp_hidden = int(2 / 3 * mlp_ratio * hidden_size)  # SwiGLU at the FLOPs of a 4× GELU MLP
        self.blocks = nn.ModuleList(
            DiTBlock(hidden_size, num_heads, mlp_hidden, qk_norm) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, in_channels)
        pos = sincos_2d(hidden_size, grid_size)[None]
        register_position_table(self, "pos_embed", pos, position_table_parameter)
        self.rope = Rope2D(grid_size, hidden_size // num_heads)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        zero_init_adaln([b.adaLN_modulation for b in self.blocks], self.final_layer)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def null_condition(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"class_labels": torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)}

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor,
        adapter_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`adapter_slots` (B, long): each row's LoRA slot when slots are attached (model/adapters/slots.py)."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.grid_size, cfg.grid_size):
            raise InvalidInputError(
                f"LightningDiT expects latents B×{cfg.in_channels}×{cfg.grid_size}×{cfg.grid_size}, "
                f"got {tuple(x.shape)}"
            )
        h = self.x_embedder(grid_to_tokens(x)) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(class_labels)
        rope = self.rope.tables  # fp32 in a bf16 model: apply_rope rotates in fp32
        route_adapter_slots(self, adapter_slots, x.shape[0])
        for block in self.blocks:
            h = block(h, c, rope)
        return tokens_to_grid(self.final_layer(h, c), cfg.grid_size)
