"""Hyper-parameters of a training run (one set for every stage; each stage reads the fields it needs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInputError

STAGES = ("ia", "ib", "ib-recon", "ii")


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
    # Stage Ib: Gaussian noise on the features, σ relative to each token's RMS (0.4: the paper's DINOv2 value).
    noise_sigma: float = 0.4
    perceptual_weight: float = 1.0  # distance in the frozen encoder's feature space; no download needed
    adversarial_weight: float = 0.0  # patch-discriminator hinge GAN; 0 = off
    adversarial_start: int = 0  # step at which the GAN term starts
    # Stage ib-recon inside `--stage all`: steps on reconstructed features (None: steps // 4; 0: skip).
    recon_steps: int | None = None
    # Stage II.
    ema_decay: float = 0.9999
    condition_dropout: float = 0.1
    feature_cache_dtype: str = "float16"

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": 0 < self.learning_rate <= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "noise_sigma": self.noise_sigma >= 0,
            "ema_decay": 0 <= self.ema_decay < 1,
            "condition_dropout": 0 <= self.condition_dropout < 1,
            "feature_cache_dtype": self.feature_cache_dtype in ("float16", "float32"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise InvalidInputError(f"invalid training settings: {values}")

    def warmup_for(self, stage: str) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return 0 if stage in ("ii", "finetune") else min(1000, self.steps // 20)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
