"""Building blocks shared by the FAE compressor, the decoders and the generators."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32: bf16 sums of squares lose too much precision at width 1536.
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        out = out.to(x.dtype)
        return out * self.weight if self.weight is not None else out


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class GeluMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def rope_2d(grid_size: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2-D rotary tables (cos, sin), each N×head_dim for a row-major grid_size² grid.

    Half of each head's channels rotate with the row index, half with the column index.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    pos = torch.arange(grid_size, dtype=torch.float32)
    rows = pos.repeat_interleave(grid_size)  # N
    cols = pos.repeat(grid_size)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # N × head_dim/2
    angles = torch.cat([angles, angles], dim=-1)  # N × head_dim (rotate-half layout)
    return angles.cos(), angles.sin()


class Rope2D(nn.Module):
    """A model's 2-D RoPE tables (`rope_2d`), fp32 whatever dtype the model is cast to.

    Training runs them in fp32; `module.to(torch.bfloat16)` would cast every float buffer, and bf16 cos/sin
    (8 bits of mantissa) rotate each query and key by a visibly wrong angle. A cast rebuilds them in fp32.
    """

    def __init__(self, grid_size: int, head_dim: int) -> None:
        super().__init__()
        self.grid_size, self.head_dim = grid_size, head_dim
        cos, sin = rope_2d(grid_size, head_dim)
        # Not persistent: a pure function of the shape, never saved.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @property
    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos, self.sin

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            cos, sin = rope_2d(self.grid_size, self.head_dim)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: B×H×N×Dh; cos/sin: N×Dh. With fp32 tables (`Rope2D`) the rotation runs in fp32 whatever x's dtype,
    and only its result is rounded to x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA, with optional 2-D RoPE and QK-RMSNorm.

    `head_dim` may differ from dim / num_heads (the FAE compressor uses 24 heads × 256 on 1536-wide features).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(2))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t ∈ [0, 1] (scaled by 1000, as in DiT) followed by an MLP."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (t.float() * 1000.0)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, grid_size²×dim (MAE/DiT layout)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows = pos.repeat_interleave(grid_size)[:, None] * omega
    cols = pos.repeat(grid_size)[:, None] * omega
    return torch.cat([cols.sin(), cols.cos(), rows.sin(), rows.cos()], dim=1).float()


def register_position_table(module: nn.Module, name: str, table: torch.Tensor, as_parameter: bool) -> None:
    """A fixed (never trained) position table on `module`. As a frozen nn.Parameter (`as_parameter`) it is
    saved with the weights and counted among the parameters, as LightningDiT's `pos_embed` and RAE's
    `decoder_pos_embed` are (and the paper's counts include); otherwise a non-persistent buffer (neither)."""
    if as_parameter:
        module.register_parameter(name, nn.Parameter(table, requires_grad=False))
        # Trainers leave these out (model/training/optim.py: trainable), whatever requires_grad_ said since.
        module.fixed_parameters = (*getattr(module, "fixed_parameters", ()), name)
    else:
        module.register_buffer(name, table, persistent=False)


def fixed_parameter_names(module: nn.Module) -> set[str]:
    """The qualified names of the never-trained parameters (`register_position_table`) inside `module`."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        for name in getattr(sub, "fixed_parameters", ())
    }


def tokens_to_grid(tokens: torch.Tensor, grid_size: int) -> torch.Tensor:
    """B×N×C → B×C×g×g."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, grid_size, grid_size)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """B×C×g×g → B×N×C."""
    return grid.flatten(2).transpose(1, 2)
