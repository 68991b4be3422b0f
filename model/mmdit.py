"""MMDiT: the text-conditional generator (joint attention over text and latent tokens, SD3-style).

Text and latent tokens keep separate weights and adaLN modulation but attend jointly; the pooled text
embedding joins the timestep in the conditioning vector. Latent tokens get 2-D RoPE, text tokens none.
The last block updates only the latent stream (its text outputs would never be read).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    apply_rope,
    grid_to_tokens,
    modulate,
    register_position_table,
    sincos_2d,
    tokens_to_grid,
)
from .lightning_dit import FinalLayer, zero_init_adaln


class StreamLayers(nn.Module):
    """One stream's weights inside a joint block."""

    def __init__(self, hidden: int, num_heads: int, mlp_hidden: int, qk_norm: bool, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = RMSNorm(hidden)
        self.attn = Attention(hidden, num_heads, qkv_bias=True, qk_norm=qk_norm)
        n_mod = 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, n_mod * hidden))
        if not pre_only:
            self.norm2 = RMSNorm(hidden)
            self.mlp = SwiGLU(hidden, mlp_hidden)


class JointBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_hidden: int, qk_norm: bool, last: bool) -> None:
        super().__init__()
        self.context = StreamLayers(hidden, num_heads, mlp_hidden, qk_norm, pre_only=last)
        self.latent = StreamLayers(hidden, num_heads, mlp_hidden, qk_norm, pre_only=False)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        c: torch.Tensor,
        attn_mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lat, con = self.latent, self.context
        sa, ca, ga, sm, cm, gm = lat.adaLN_modulation(c).chunk(6, dim=-1)
        q_x, k_x, v_x = lat.attn.project_qkv(modulate(lat.norm1(x), sa, ca))
        q_x, k_x = apply_rope(q_x, *rope), apply_rope(k_x, *rope)
        mods = con.adaLN_modulation(c).chunk(2 if con.pre_only else 6, dim=-1)
        q_c, k_c, v_c = con.attn.project_qkv(modulate(con.norm1(ctx), mods[0], mods[1]))
        q, k, v = (torch.cat(pair, dim=2) for pair in ((q_c, q_x), (k_c, k_x), (v_c, v_x)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).flatten(2)
        n_ctx = ctx.shape[1]
        x = x + ga.unsqueeze(1) * lat.attn.proj(out[:, n_ctx:])
        x = x + gm.unsqueeze(1) * lat.mlp(modulate(lat.norm2(x), sm, cm))
        if con.pre_only:
            return x, ctx
        _, _, g_ca, s_cm, c_cm, g_cm = mods
        ctx = ctx + g_ca.unsqueeze(1) * con.attn.proj(out[:, :n_ctx])
        ctx = ctx + g_cm.unsqueeze(1) * con.mlp(modulate(con.norm2(ctx), s_cm, c_cm))
        return x, ctx


class MMDiT(ModelMixin, ConfigMixin):
    """`position_table_parameter`: the fixed sin-cos table as a frozen parameter (as in LightningDiT)."""

    condition_type = "text"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 32,
        grid_size: int = 16,
        hidden_size: int = 1024,
        depth: int = 16,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        text_dim: int = 2048,
        pooled_dim: int = 2048,
        qk_norm: bool = True,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        position_table_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.context_embedder = nn.Linear(text_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.pooled_embedder = nn.Sequential(
            nn.Linear(pooled_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        mlp_hidden = int(2 / 3 * mlp_ratio * hidden_size)
        self.blocks = nn.ModuleList(
            JointBlock(hidden_size, num_heads, mlp_hidden, qk_norm, last=i == depth - 1) for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, in_channels)
        pos = sincos_2d(hidden_size, grid_size)[None]
        register_position_table(self, "pos_embed", pos, position_table_parameter)
        self.rope = Rope2D(grid_size, hidden_size // num_heads)
        zero_init_adaln(
            [m for b in self.blocks for m in (b.latent.adaLN_modulation, b.context.adaLN_modulation)],
            self.final_layer,
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_pooled: torch.Tensor,
        adapter_slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`adapter_slots` (B, long): each row's LoRA slot when slots are attached (model/adapters/slots.py)."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.grid_size, cfg.grid_size):
            raise InvalidInputError(
                f"MMDiT expects latents B×{cfg.in_channels}×{cfg.grid_size}×{cfg.grid_size}, got {tuple(x.shape)}"
            )
        h = self.x_embedder(grid_to_tokens(x)) + self.pos_embed.to(x.dtype)
        ctx = self.context_embedder(text_tokens.to(h.dtype))
        c = self.t_embedder(t) + self.pooled_embedder(text_pooled.to(h.dtype))
        # Key mask over [text, latent]: padded text tokens are never attended to; latent tokens always are.
        keep = torch.cat(
            [text_mask.bool(), text_mask.new_ones(x.shape[0], h.shape[1], dtype=torch.bool)], dim=1
        )
        attn_mask = keep[:, None, None, :]
        rope = self.rope.tables  # fp32 in a bf16 model: apply_rope rotates in fp32
        route_adapter_slots(self, adapter_slots, x.shape[0])
        for block in self.blocks:
            h, ctx = block(h, ctx, c, attn_mask, rope)
        return tokens_to_grid(self.final_layer(h, c), cfg.grid_size)
