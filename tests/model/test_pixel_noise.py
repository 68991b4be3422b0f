"""Stage Ib's feature noise: the paper's absolute σ (DINOv2) or σ times each token's RMS, per preset."""

from __future__ import annotations

import pytest
import torch

from model.errors import InvalidInputError
from model.pipeline import FAEPipeline
from model.training.autoencoder import PixelDecoderTask
from model.training.config import TrainConfig


def noise_per_token(noise_scale: str, features: torch.Tensor) -> torch.Tensor:
    """The std of the noise stage Ib's real task adds to each token (over many draws)."""
    pipe = FAEPipeline.from_preset("tiny")
    config = TrainConfig(noise_sigma=0.4, noise_scale=noise_scale, adversarial_weight=0.0)
    # The feature source is never read by `decoder_input`.
    task = PixelDecoderTask("noisy", pipe.pixel_decoder, pipe.encoder, [], config, torch.device("cpu"))  # type: ignore[arg-type]
    rng = torch.Generator().manual_seed(0)
    batch = features.expand(512, -1, -1)
    return (task.decoder_input(batch, rng) - batch).std(dim=(0, 2))


def test_absolute_noise_ignores_the_token_norm_and_token_rms_follows_it() -> None:
    scales = torch.tensor([0.5, 1.0, 4.0, 10.0])
    features = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(1))
    features = (
        features / features.pow(2).mean(-1, keepdim=True).sqrt() * scales.view(1, 4, 1)
    )  # token RMS = scales
    absolute = noise_per_token("absolute", features)
    assert torch.allclose(absolute, torch.full((4,), 0.4), rtol=0.03), absolute
    relative = noise_per_token("token-rms", features)
    assert torch.allclose(relative, 0.4 * scales, rtol=0.03), relative


def test_paper_presets_default_to_absolute_noise() -> None:
    for preset in ("paper-imagenet", "paper-t2i"):
        assert TrainConfig().for_preset(preset).noise_scale == "absolute"
    for preset in ("demo", "demo-cpu", "tiny", None):  # other encoders (and --model runs): by the norm
        assert TrainConfig().for_preset(preset).noise_scale == "token-rms"
    assert TrainConfig(noise_scale="token-rms").for_preset("paper-imagenet").noise_scale == "token-rms"
    with pytest.raises(InvalidInputError, match="noise_scale"):
        TrainConfig(noise_scale="global")
