"""RoPE in a bf16 model: the tables and the rotation stay fp32 (as in training), only the result is rounded."""

from __future__ import annotations

import tempfile

import torch

from model.layers import Rope2D, apply_rope
from model.pipeline import FAEPipeline


def exact_tables(grid: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_2d`'s tables in float64 (the reference)."""
    quarter = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    pos = torch.arange(grid, dtype=torch.float64)
    angles = torch.cat([pos.repeat_interleave(grid)[:, None] * freqs, pos.repeat(grid)[:, None] * freqs], -1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def test_bf16_rope_output_is_the_rounded_fp32_rotation() -> None:
    """With the model's own (fp32) tables, a bf16 query comes out as the correctly rounded exact rotation;
    bf16 tables, which a plain `.to(bfloat16)` used to make, miss it on about a fifth of the elements."""
    rope = Rope2D(grid_size=16, head_dim=64).to(torch.bfloat16)
    cos, sin = rope.tables
    assert cos.dtype == sin.dtype == torch.float32
    q = torch.randn(4, 2, 256, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    exact = apply_rope(q.double(), *exact_tables(16, 64))

    out = apply_rope(q, cos, sin)
    assert out.dtype == torch.bfloat16
    err = (out.double() - exact).abs()
    assert bool((err <= 2.0**-7 * exact.abs() + 1e-6).all()), float(err.max())  # ≤ 1 bf16 ulp everywhere
    assert float((out == exact.to(torch.bfloat16)).double().mean()) > 0.999

    rounded_tables = apply_rope(q, cos.to(torch.bfloat16), sin.to(torch.bfloat16))
    assert float((rounded_tables == exact.to(torch.bfloat16)).double().mean()) < 0.9


def test_rope_tables_stay_fp32_in_a_bf16_model_however_it_is_made() -> None:
    """Cast with `.to` or loaded with `dtype=bfloat16`, every RoPE table is fp32 and equals a fresh one."""
    pipe = FAEPipeline.from_preset("tiny")
    with tempfile.TemporaryDirectory() as directory:
        pipe.save_pretrained(directory)
        loaded = FAEPipeline.from_pretrained(directory, dtype=torch.bfloat16)
    for candidate in (loaded, pipe.to(dtype=torch.bfloat16)):
        for module in (candidate.generator, candidate.feature_decoder):
            assert module.dtype == torch.bfloat16
            cos, sin = module.rope.tables
            fresh = Rope2D(module.rope.grid_size, module.rope.head_dim)
            assert cos.dtype == torch.float32 and torch.equal(cos, fresh.cos) and torch.equal(sin, fresh.sin)


def test_a_bf16_feature_decoder_stays_close_to_its_fp32_self() -> None:
    """End to end through the feature decoder (RoPE in every block): bf16 weights and activations, fp32 RoPE."""
    pipe = FAEPipeline.from_preset("tiny")
    decoder = pipe.feature_decoder.eval()
    latents = torch.randn(2, *pipe.latent_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = decoder(latents)
        low = decoder.to(torch.bfloat16)(latents.to(torch.bfloat16)).float()
    assert float((low - reference).norm() / reference.norm()) < 0.02
