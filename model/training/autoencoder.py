"""Stages Ia and Ib: the feature auto-encoder and the pixel decoder, on cached frozen-encoder features.

- Ia (`FeatureAutoencoderTask`): compressor + feature decoder, loss MSE(x̂, x) + β·KL (KL per latent element).
- Ib (`PixelDecoderTask`, mode "noisy"): the pixel decoder on x + σ·rms(x)·ε, σ relative to each token's RMS.
- ib-recon (mode "recon"): the same decoder fine-tuned on x̂ = feature_decoder(z), z ~ compressor(x).
  Pixel losses: L1 + a perceptual term (relative MSE in the frozen encoder's feature space, which needs no
  download) + a hinge-GAN term (a head on the frozen encoder's features, or a pixel PatchGAN) weighted
  adaptively (VQGAN: the ratio of the two gradients at the decoder's last layer) from a delayed start.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fae import DiagonalGaussian
from ..latent_cache import CachedFeatures
from .config import TrainConfig
from .discriminator import (
    EncoderFeatureDiscriminator,
    PatchDiscriminator,
    adaptive_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .feature_source import CachedBatches, FeatureBatches
from .optim import Optimization, trainable
from .train_loop import BatchSampler, autocast


def feature_batches(
    features: CachedFeatures | FeatureBatches, config: TrainConfig, task: str
) -> FeatureBatches:
    """A bare feature cache is read in `BatchSampler` order (epochs of random permutations)."""
    if isinstance(features, CachedFeatures):
        return CachedBatches(features, BatchSampler(2 * len(features), config.batch_size, config.seed, task))
    return features


class FeatureAutoencoderTask:
    name = "ia"

    def __init__(
        self,
        compressor: nn.Module,
        feature_decoder: nn.Module,
        features: CachedFeatures | FeatureBatches,
        config: TrainConfig,
        device: torch.device,
        standardize_features: bool = False,
    ) -> None:
        self.compressor, self.feature_decoder = compressor, feature_decoder
        self.features = feature_batches(features, config, self.name)
        self.config, self.device = config, device
        self.images_per_step = config.batch_size
        if standardize_features:
            # See FeatureDecoder: a new decoder predicts standardised features. Only a new one: a decoder
            # trained without statistics already outputs raw features, and adding them would break it.
            feature_decoder.set_feature_stats(*self.features.channel_stats())
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
        x, _ = self.features.batch(step, self.device)
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
        return {**self.optim.state_dict(), "data": self.features.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state)
        self.features.load_state_dict(state.get("data", {}))

    def finish(self) -> None:
        self.features.close()
        self.compressor.eval().requires_grad_(False)
        self.feature_decoder.eval().requires_grad_(False)


def encoder_features(encoder: nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """The frozen encoder on images in [0, 1], differentiable with respect to the images.

    The encoder's own `forward` checks the value range, which a decoder in training overshoots; this applies
    the same resize and normalisation without the check.
    """
    size = encoder.image_size
    if images01.shape[-2:] != (size, size):
        # the encoder's own resize (bicubic for DINOv2), so that decoded and cached real images match
        images01 = F.interpolate(
            images01, size=(size, size), mode=encoder.resize_mode, align_corners=False, antialias=True
        )
    pixels = (images01 - encoder.pixel_mean) / encoder.pixel_std
    return encoder.encode_preprocessed(pixels.to(encoder.dtype))


class PixelDecoderTask:
    def __init__(
        self,
        mode: str,
        pixel_decoder: nn.Module,
        encoder: nn.Module,
        features: CachedFeatures | FeatureBatches,
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
        self.features = feature_batches(features, config, self.name)
        self.config, self.device = config, device
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
        self.discriminator: nn.Module | None = None
        # the adversarial term starts late (by default half-way), once L1 has shaped the decoder
        self.adversarial_start = (
            config.adversarial_start if config.adversarial_start is not None else config.steps // 2
        )
        self.last_adaptive_weight: float | None = None
        if config.adversarial_weight:
            torch.manual_seed(config.seed)  # the discriminator's initial weights are part of the run
            if config.discriminator == "encoder":
                self.discriminator = EncoderFeatureDiscriminator(encoder.feature_dim, encoder.grid_size)
            else:
                self.discriminator = PatchDiscriminator()
            self.discriminator.to(device)
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
            "adversarial_start": self.adversarial_start,
            "discriminator": c.discriminator,
        }
        identity["noise_sigma" if self.mode == "noisy" else "kl_weight"] = (
            c.noise_sigma if self.mode == "noisy" else c.kl_weight
        )
        if self.mode == "noisy" and c.noise_scale == "absolute":  # checkpoints from before the option resume
            identity["noise_scale"] = c.noise_scale
        return identity

    @torch.no_grad()
    def decoder_input(self, x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.mode == "noisy":
            noise = torch.randn(x.shape, generator=rng, device=x.device, dtype=x.dtype)
            return x + noise_std(x, self.config) * noise
        with autocast(self.device):
            latents = self.compressor(x.to(self.compressor.dtype)).sample(generator=rng)
            return self.feature_decoder(latents).float()

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight of the decoder's output layer, where the adaptive weight compares gradients."""
        refine = self.pixel_decoder.refine
        return refine[-1].weight if refine is not None else self.pixel_decoder.pred.weight

    def judge(self, images: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        return self.discriminator(tokens if self.config.discriminator == "encoder" else images)

    def train_step(self, step: int, rng: torch.Generator) -> float:
        cfg = self.config
        x, target = self.features.batch(step, self.device)
        inputs = self.decoder_input(x, rng)
        adversarial = self.discriminator is not None and step >= self.adversarial_start
        on_features = adversarial and cfg.discriminator == "encoder"
        fake_tokens = real_tokens = None
        with autocast(self.device):
            decoded = self.pixel_decoder(inputs)
            loss = (decoded.float() - target).abs().mean()
            if cfg.perceptual_weight > 0 or on_features:
                fake_tokens = encoder_features(self.encoder, (decoded.float() + 1.0) / 2.0).float()
            if cfg.perceptual_weight > 0:
                loss = loss + cfg.perceptual_weight * F.mse_loss(fake_tokens, x) / x.pow(2).mean()
            if adversarial:
                self.discriminator.requires_grad_(False)
                generator_loss = hinge_generator_loss(self.judge(decoded, fake_tokens).float())
                self.discriminator.requires_grad_(True)
                weight = cfg.adversarial_weight * adaptive_weight(loss, generator_loss, self.last_layer)
                self.last_adaptive_weight = float(weight)
                loss = loss + weight * generator_loss
        self.optim.step(loss)
        if adversarial:
            with autocast(self.device):
                if on_features:
                    # real tokens through the same resize as the fake ones (not the fp16 cache)
                    with torch.no_grad():
                        real_tokens = encoder_features(self.encoder, (target + 1.0) / 2.0).float()
                real = self.judge(target, real_tokens)
                fake = self.judge(decoded.detach(), fake_tokens.detach() if on_features else None)
                disc_loss = hinge_discriminator_loss(real.float(), fake.float())
            self.disc_optim.step(disc_loss)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"decoder": self.optim.state_dict(), "data": self.features.state_dict()}
        if self.discriminator is not None:
            state["discriminator"] = self.disc_optim.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state["decoder"])
        self.features.load_state_dict(state.get("data", {}))
        if self.discriminator is not None:
            self.disc_optim.load_state_dict(state["discriminator"])

    def finish(self) -> None:
        self.features.close()
        self.pixel_decoder.eval().requires_grad_(False)


def noise_std(features: torch.Tensor, config: TrainConfig) -> torch.Tensor | float:
    """Stage Ib's noise level: σ ("absolute", the paper's for DINOv2) or σ times each token's RMS
    ("token-rms"; a config left unresolved, i.e. None, means this one)."""
    if config.noise_scale == "absolute":
        return config.noise_sigma
    return config.noise_sigma * features.pow(2).mean(-1, keepdim=True).sqrt()
