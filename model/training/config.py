"""Hyper-parameters of a training run (one set for every stage; each stage reads the fields it needs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInputError

STAGES = ("ia", "ib", "ib-recon", "ii")
# adversarial_weight of a new model of these presets (RAE's disc_weight; the paper's λ_GAN is not published)
ADVERSARIAL_DEFAULTS = {"paper-imagenet": 0.75, "paper-t2i": 0.75, "demo": 0.75, "demo-cpu": 0.75}
# noise_scale of a new model of these presets: the paper's absolute σ for DINOv2; others scale by each token's
# RMS (the paper scales "by the norm" for other encoders), as do --model runs.
NOISE_SCALE_DEFAULTS = {"paper-imagenet": "absolute", "paper-t2i": "absolute"}
NOISE_SCALES = ("absolute", "token-rms")


@dataclass
class TrainConfig:
    steps: int = 1000  # per stage
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    # Linear warm-up steps; None: min(1000, steps // 20) for the cosine stages (I), none for stage II (paper).
    warmup_steps: int | None = None
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # Stage Ia: MSE + kl_weight · KL, the KL averaged per latent element (the paper's β is not published).
    kl_weight: float = 1e-4
    # Stage Ib: Gaussian noise on the features, x + σ·ε ("absolute": the paper's σ = 0.4 for DINOv2) or
    # x + σ·rms(token)·ε ("token-rms"); None: the preset's (NOISE_SCALE_DEFAULTS), else "token-rms".
    noise_sigma: float = 0.4
    noise_scale: str | None = None
    perceptual_weight: float = 1.0  # distance in the frozen encoder's feature space; no download needed
    # Hinge-GAN term of stages Ib/ib-recon, times the adaptive weight (VQGAN). None: the preset's default
    # (ADVERSARIAL_DEFAULTS: on for the paper and demo presets; off for others and for --model runs); 0 = off.
    adversarial_weight: float | None = None
    adversarial_start: int | None = None  # step at which the GAN term starts; None: half the stage's steps
    # "encoder": a discriminator head on the frozen encoder's tokens; "patch": a pixel-space PatchGAN
    discriminator: str = "encoder"
    # Stage ib-recon inside `--stage all`: steps on reconstructed features (None: steps // 4; 0: skip).
    recon_steps: int | None = None
    # Stage II.
    ema_decay: float = 0.9999
    condition_dropout: float = 0.1
    feature_cache_dtype: str = "float16"
    # Stages I on tar shards (`fae pack-shards`): "cache" the features, "stream" them (encoder run online,
    # shards read by a prefetching thread), or "auto": stream when the cache would pass the budget.
    feature_source: str = "auto"
    feature_cache_budget_gb: float = 200.0
    prefetch_batches: int = 4

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": 0 < self.learning_rate <= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "noise_sigma": self.noise_sigma >= 0,
            "noise_scale": self.noise_scale is None or self.noise_scale in NOISE_SCALES,
            "ema_decay": 0 <= self.ema_decay < 1,
            "condition_dropout": 0 <= self.condition_dropout < 1,
            "feature_cache_dtype": self.feature_cache_dtype in ("float16", "float32"),
            "feature_source": self.feature_source in ("auto", "cache", "stream"),
            "feature_cache_budget_gb": self.feature_cache_budget_gb >= 0,
            "prefetch_batches": self.prefetch_batches >= 1,
            "adversarial_weight": self.adversarial_weight is None or self.adversarial_weight >= 0,
            "adversarial_start": self.adversarial_start is None or self.adversarial_start >= 0,
            "discriminator": self.discriminator in ("encoder", "patch"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(f"invalid training settings: {values}")

    def warmup_for(self, stage: str) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return 0 if stage in ("ii", "finetune") else min(1000, self.steps // 20)

    def for_preset(self, preset: str | None) -> TrainConfig:
        """This config with `adversarial_weight` and `noise_scale` resolved: given, else the preset's default,
        else off and "token-rms"."""
        resolved: dict[str, Any] = {}
        if self.adversarial_weight is None:
            resolved["adversarial_weight"] = ADVERSARIAL_DEFAULTS.get(preset or "", 0.0)
        if self.noise_scale is None:
            resolved["noise_scale"] = NOISE_SCALE_DEFAULTS.get(preset or "", "token-rms")
        return TrainConfig.from_dict({**self.to_dict(), **resolved}) if resolved else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
