"""Stage II and the LoRA fine-tune: the generator with flow matching on cached latents.

Each step samples z from the cached posterior of an image or its flip, normalises it with the generator's
latent statistics, draws t from the scheduler's training distribution and regresses the velocity ε − z.
Conditions are dropped to the null condition with probability `condition_dropout` (classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..latent_cache import CachedLatents
from .config import TrainConfig
from .optim import Optimization
from .train_loop import BatchSampler, autocast

LABEL_MODES = ("dataset", "fixed", "random")


class ClassConditions:
    """Class labels per image. Modes: "dataset" (the dataset's labels, the null class where it has none),
    "fixed" (one label for every image) and "random" (a uniform label per sample, so that the result applies to
    whatever class a caller asks for: the fine-tune default on class-conditional bases)."""

    def __init__(
        self,
        num_classes: int,
        mode: str,
        labels: Sequence[int | None] | None = None,
        fixed_label: int | None = None,
    ) -> None:
        if mode not in LABEL_MODES:
            raise InvalidInputError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
        self.num_classes, self.mode, self.null = num_classes, mode, num_classes
        if mode == "fixed" and (fixed_label is None or not 0 <= fixed_label < num_classes):
            raise InvalidInputError(
                f"class label {fixed_label!r} is out of range: the base has classes 0..{num_classes - 1}"
            )
        bad = [label for label in labels or [] if label is not None and not 0 <= label < num_classes]
        if bad:
            raise InvalidInputError(
                f"the dataset has class labels up to {max(bad)} but the model has {num_classes} classes"
            )
        self.labels = torch.tensor(
            [self.null if label is None else label for label in labels or []], dtype=torch.long
        )
        self.fixed_label = fixed_label

    def describe(self) -> dict[str, Any]:
        return {"label_mode": self.mode, "class_label": self.fixed_label}

    def batch(
        self, images: torch.Tensor, drop: torch.Tensor, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        device = drop.device
        if self.mode == "dataset":
            labels = self.labels[images.cpu()].to(device)
        elif self.mode == "fixed":
            labels = torch.full(images.shape, self.fixed_label, dtype=torch.long, device=device)
        else:
            labels = torch.randint(0, self.num_classes, images.shape, generator=rng, device=device)
        return {"class_labels": torch.where(drop, torch.full_like(labels, self.null), labels)}


class TextConditions:
    """Captions embedded once (unique captions only); a dropped caption uses the empty prompt's embedding.

    Each image has one caption or several variants (`ImageDataset.caption_choices`); with variants, each
    sample draws one of its image's variants uniformly at every step.
    """

    def __init__(self, encode: Any, captions: Sequence[str | Sequence[str]], chunk: int = 64) -> None:
        choices = [(c,) if isinstance(c, str) else tuple(c) or ("",) for c in captions]
        unique = sorted({text for variants in choices for text in variants} | {""})
        index = {caption: i for i, caption in enumerate(unique)}
        parts = [encode(unique[i : i + chunk]) for i in range(0, len(unique), chunk)]
        self.tokens = torch.cat([p["text_tokens"] for p in parts])
        self.mask = torch.cat([p["text_mask"] for p in parts])
        self.pooled = torch.cat([p["text_pooled"] for p in parts])
        # image i's variants are rows caption_table[i, :variant_count[i]] (padded with its first variant)
        width = max(len(variants) for variants in choices)
        self.caption_table = torch.tensor(
            [
                [index[v] for v in variants] + [index[variants[0]]] * (width - len(variants))
                for variants in choices
            ],
            dtype=torch.long,
        )
        self.variant_count = torch.tensor([len(variants) for variants in choices], dtype=torch.long)
        self.empty = index[""]

    def describe(self) -> dict[str, Any]:
        return {"unique_captions": int(self.tokens.shape[0])}

    def batch(
        self, images: torch.Tensor, drop: torch.Tensor, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        images = images.cpu()
        column = torch.zeros(len(images), dtype=torch.long)
        # Only with variants: a single-caption dataset draws nothing, so its runs stay as they were.
        if self.caption_table.shape[1] > 1:
            draw = torch.rand(len(images), generator=rng, device=drop.device).cpu()
            column = (draw * self.variant_count[images]).long()
        rows = self.caption_table[images, column].to(drop.device)
        rows = torch.where(drop, torch.full_like(rows, self.empty), rows).to(self.tokens.device)
        return {
            "text_tokens": self.tokens[rows],
            "text_mask": self.mask[rows],
            "text_pooled": self.pooled[rows],
        }


class GeneratorTask:
    """Flow matching on cached latents. `named_params` are the parameters trained (all of the generator for
    stage II, the LoRA matrices for a fine-tune); `ema_decay` None trains without an EMA copy."""

    def __init__(
        self,
        name: str,
        generator: nn.Module,
        named_params: list[tuple[str, nn.Parameter]],
        latents: CachedLatents,
        conditions: ClassConditions | TextConditions,
        scheduler: Any,
        latent_stats: tuple[list[float], list[float]] | None,
        config: TrainConfig,
        device: torch.device,
        ema_decay: float | None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.generator, self.latents, self.conditions = name, generator, latents, conditions
        self.scheduler, self.config, self.device = scheduler, config, device
        self.images_per_step = config.batch_size
        self.identity = identity or {}
        self.optim = Optimization(
            named_params,
            config.learning_rate,
            config.weight_decay,
            "constant",
            config.warmup_for(name),
            config.steps,
            config.grad_clip,
        )
        self.ema_decay = ema_decay
        self.ema = [p.detach().float().clone() for p in self.optim.params] if ema_decay is not None else None
        self.stats = None
        if latent_stats is not None:
            mean, std = (
                torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in latent_stats
            )
            self.stats = (mean, std)
        self.sampler = BatchSampler(2 * len(latents), config.batch_size, config.seed, name)
        self.step_count = 0

    def fingerprint(self) -> dict[str, Any]:
        c = self.config
        return {
            "task": self.name,
            "data": self.latents.key,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "lr": c.learning_rate,
            "condition_dropout": c.condition_dropout,
            "ema_decay": self.ema_decay,
            **self.identity,
        }

    def train_step(self, step: int, rng: torch.Generator) -> float:
        items = self.sampler.indices(step)
        mean, logvar = self.latents.batch(items, self.device)
        eps = torch.randn(mean.shape, generator=rng, device=self.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        if self.stats is not None:
            z = (z - self.stats[0]) / self.stats[1]
        t = self.scheduler.sample_training_timesteps(z.shape[0], self.device, generator=rng)
        noise = torch.randn(z.shape, generator=rng, device=self.device)
        x_t = self.scheduler.interpolate(z, noise, t)
        drop = torch.rand(z.shape[0], generator=rng, device=self.device) < self.config.condition_dropout
        condition = self.conditions.batch(items // 2, drop, rng)
        dtype = next(self.generator.parameters()).dtype
        with autocast(self.device):
            velocity = self.generator(x_t.to(dtype), t, **condition)
        loss = F.mse_loss(velocity.float(), self.scheduler.velocity_target(z, noise))
        self.optim.step(loss)
        if self.ema is not None:
            decay = min(
                self.ema_decay, (1 + step) / (10 + step)
            )  # a short warm-up so early EMA is not the init
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.optim.params], 1.0 - decay)
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        state = {"optim": self.optim.state_dict()}
        if self.ema is not None:
            state["ema"] = {
                name: e.clone() for (name, _), e in zip(self.optim.named_params, self.ema, strict=True)
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state["optim"])
        if self.ema is not None:
            self.ema = [
                state["ema"][name].to(self.device).float().clone() for name, _ in self.optim.named_params
            ]

    def finish(self) -> None:
        """With EMA: the model keeps the EMA weights (what gets saved and sampled)."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.optim.params, self.ema, strict=True):
                    p.copy_(e.to(p.dtype))
        self.generator.eval()
        for p in self.optim.params:
            p.requires_grad_(False)
