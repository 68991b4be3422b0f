"""The peer a user would run today instead: diffusers' DiTPipeline (DiT-XL/2 + SD-VAE), random weights, real shapes."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler


def build_dit_peer(device: torch.device, dtype: torch.dtype, smoke: bool = False) -> DiTPipeline:
    if smoke:  # same code path, toy sizes (CI)
        transformer = DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,
            num_layers=1,
            sample_size=4,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=8,
        )
    else:  # DiT-XL/2 at 256 px (32×32×4 SD-VAE latents) and the SD-VAE decoder
        transformer = DiTTransformer2DModel(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=256,
        )
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)
