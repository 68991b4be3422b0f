"""Stages Ia and Ib: the feature auto-encoder and the pixel decoder, on cached frozen-encoder features.

- Ia (`FeatureAutoencoderTask`): compressor + feature decoder, loss MSE(x̂, x) + β·KL (KL per latent element).
- Ib (`PixelDecoderTask`, mode "noisy"): the pixel decoder on x + σ·rms(x)·ε, σ relative to each token's RMS.
- ib-recon (mode "recon"): the same decoder fine-tuned on x̂ = feature_decoder(z), z ~ compressor(x).
  Pixel losses: L1 + a perceptual term (relative MSE in the frozen encoder's feature space, which needs no
  download) + an optional hinge-GAN term from a small patch discriminator.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fae import DiagonalGaussian
from ..latent_cache import CachedFeatures
from .config import TrainConfig
from .discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from .optim import Optimization, trainable
from .train_loop import BatchSampler, autocast


class FeatureAutoencoderTask:
    name = "ia"

    def __init__(
        self,
        compressor: nn.Module,
        feature_decoder: nn.Module,
        features: CachedFeatures,
        config: TrainConfig,
        device: torch.device,
        standardize_features: bool = False,
    ) -> None:
        self.compressor, self.feature_decoder = compressor, feature_decoder
        self.features, self.config, self.device = features, config, device
        self.images_per_step = config.batch_size
        if standardize_features:
            # See FeatureDecoder: a new decoder predicts standardised features. Only a new one: a decoder
            # trained without statistics already outputs raw features, and adding them would break it.
            feature_decoder.set_feature_stats(*features.channel_stats())
        params = trainable(compressor, "compressor") + trainable(feature_decoder, "feature_decoder")
        self.optim = Optimization(
            params,
            config.learning_rate,
            config.weight_decay,
            "cosine",
            config.warmup_for("ia"),
            config.steps,
            config.grad_clip,
        )
        self.sampler = BatchSampler(2 * len(features), config.batch_size, config.seed, self.name)

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            "task": self.name,
            "data": self.features.key,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "lr": c.learning_rate,
            "kl_weight": c.kl_weight,
            # checkpoints of a decoder with (or without) feature statistics only resume into the same kind
            "feature_std": self.feature_decoder.config.feature_std,
        }

    def train_step(self, step: int, rng: torch.Generator) -> float:
        x, _ = self.features.batch(self.sampler.indices(step), self.device)
        with autocast(self.device):
            posterior = self.compressor(x)
            reconstruction = self.feature_decoder(posterior.sample(generator=rng))
        mse = F.mse_loss(reconstruction.float(), x)
        # the KL sums over every latent element: in float32, not in autocast's bf16
        kl = (
            DiagonalGaussian(posterior.mean.float(), posterior.logvar.float()).kl().mean()
            / posterior.mean[0].numel()
        )
        loss = mse + self.config.kl_weight * kl
        self.optim.step(loss)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state)

    def finish(self) -> None:
        self.compressor.eval().requires_grad_(False)
        self.feature_decoder.eval().requires_grad_(False)


def encoder_features(encoder: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """The frozen encoder on images in [0, 1], differentiable with respect to the images.

    The encoder's own `forward` checks the value range, which a decoder in training overshoots; this applies
    the same resize and normalisation without the check.
    """
    size = encoder.image_size
    if images01.shape[-2:] != (size, size):
        images01 = F.interpolate(
            images01, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    pixels = (images01 - encoder.pixel_mean) / encoder.pixel_std
    return encoder.encode_preprocessed(pixels.to(encoder.dtype))


class PixelDecoderTask:
    def __init__(
        self,
        mode: str,
        pixel_decoder: nn.Module,
        encoder: nn.Module,
        features: CachedFeatures,
        config: TrainConfig,
        device: torch.device,
        compressor: nn.Module | None = None,
        feature_decoder: nn.Module | None = None,
    ) -> None:
        if mode not in ("noisy", "recon"):
            raise ValueError(f"unknown pixel-decoder mode {mode!r}")
        if mode == "recon" and (compressor is None or feature_decoder is None):
            raise ValueError("ib-recon needs the compressor and the feature decoder")
        self.name = "ib" if mode == "noisy" else "ib-recon"
        self.mode, self.pixel_decoder, self.encoder = mode, pixel_decoder, encoder
        self.compressor, self.feature_decoder = compressor, feature_decoder
        self.features, self.config, self.device = features, config, device
        self.images_per_step = config.batch_size
        self.optim = Optimization(
            trainable(pixel_decoder, "pixel_decoder"),
            config.learning_rate,
            config.weight_decay,
            "cosine",
            config.warmup_for(self.name),
            config.steps,
            config.grad_clip,
        )
        self.discriminator = None
        if config.adversarial_weight > 0:
            torch.manual_seed(config.seed)  # the discriminator's initial weights are part of the run
            self.discriminator = PatchDiscriminator().to(device)
            self.disc_optim = Optimization(
                trainable(self.discriminator, "discriminator"),
                config.learning_rate,
                0.0,
                "constant",
                0,
                config.steps,
                config.grad_clip,
                betas=(0.5, 0.9),
            )
        self.sampler = BatchSampler(2 * len(features), config.batch_size, config.seed, self.name)

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        identity = {
            "task": self.name,
            "data": self.features.key,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "lr": c.learning_rate,
            "perceptual_weight": c.perceptual_weight,
            "adversarial_weight": c.adversarial_weight,
            "adversarial_start": c.adversarial_start,
        }
        identity["noise_sigma" if self.mode == "noisy" else "kl_weight"] = (
            c.noise_sigma if self.mode == "noisy" else c.kl_weight
        )
        return identity

    @torch.no_grad()
    def decoder_input(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.mode == "noisy":
            rms = x.pow(2).mean(-1, keepdim=True).sqrt()
            noise = torch.randn(x.shape, generator=rng, device=x.device, dtype=x.dtype)
            return x + self.config.noise_sigma * rms * noise
        with autocast(self.device):
            latents = self.compressor(x.to(self.compressor.dtype)).sample(generator=rng)
            return self.feature_decoder(latents).float()

    def train_step(self, step: int, rng: torch.Generator) -> float:
        cfg = self.config
        x, target = self.features.batch(self.sampler.indices(step), self.device)
        inputs = self.decoder_input(x, rng)
        adversarial = self.discriminator is not None and step >= cfg.adversarial_start
        with autocast(self.device):
            decoded = self.pixel_decoder(inputs)
            loss = (decoded.float() - target).abs().mean()
            if cfg.perceptual_weight > 0:
                features = encoder_features(self.encoder, (decoded.float() + 1.0) / 2.0).float()
                loss = loss + cfg.perceptual_weight * F.mse_loss(features, x) / x.pow(2).mean()
            if adversarial:
                self.discriminator.requires_grad_(False)
                loss = loss + cfg.adversarial_weight * hinge_generator_loss(
                    self.discriminator(decoded).float()
                )
                self.discriminator.requires_grad_(True)
        self.optim.step(loss)
        if adversarial:
            with autocast(self.device):
                real, fake = self.discriminator(target), self.discriminator(decoded.detach())
                disc_loss = hinge_discriminator_loss(real.float(), fake.float())
            self.disc_optim.step(disc_loss)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"decoder": self.optim.state_dict()}
        if self.discriminator is not None:
            state["discriminator"] = self.disc_optim.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state["decoder"])
        if self.discriminator is not None:
            self.disc_optim.load_state_dict(state["discriminator"])

    def finish(self) -> None:
        self.pixel_decoder.eval().requires_grad_(False)
