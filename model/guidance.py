"""Classifier-free guidance: per-interval scale schedules and the guided velocity of a mixed batch.

Guidance acts on all latent channels (not DiT's legacy first-3-channels slice). Each sample carries its own
schedule; at each step only samples whose current scale differs from 1 pay for an unconditional pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import InvalidInputError

Condition = dict[str, torch.Tensor]


@dataclass(frozen=True)
class GuidanceInterval:
    t_high: float  # interval covers t_low <= t <= t_high (t = 1 is noise)
    t_low: float
    scale: float


@dataclass(frozen=True)
class GuidanceSchedule:
    """Scale as a function of t: the first interval containing t wins, else `default`."""

    intervals: tuple[GuidanceInterval, ...] = ()
    default: float = 1.0

    def scale_at(self, t: float) -> float:
        for interval in self.intervals:
            if interval.t_low <= t <= interval.t_high:
                return interval.scale
        return self.default

    @classmethod
    def constant(cls, scale: float) -> GuidanceSchedule:
        return cls((), float(scale))

    @classmethod
    def fae_three_part(cls, scale: float = 2.5, early_scale: float = 0.9) -> GuidanceSchedule:
        """The paper's schedule: 0.9 for t ∈ [1, 0.9], none in between, `scale` (2.5) for t ∈ [0.7, 0]."""
        return cls(
            (GuidanceInterval(1.0, 0.9, early_scale), GuidanceInterval(0.7, 0.0, float(scale))),
            default=1.0,
        )

    @classmethod
    def named(cls, name: str, scale: float) -> GuidanceSchedule:
        if not 0.0 <= scale <= 30.0:
            raise InvalidInputError(f"guidance_scale must be between 0 and 30, got {scale}")
        if name == "constant":
            return cls.constant(scale)
        if name == "fae-three-part":
            return cls.fae_three_part(scale)
        raise InvalidInputError(f"unknown guidance schedule {name!r}; choose 'constant' or 'fae-three-part'")


def select_condition(cond: Condition, index: torch.Tensor) -> Condition:
    return {k: v.index_select(0, index) for k, v in cond.items()}


def cat_conditions(a: Condition, b: Condition) -> Condition:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def guided_rows(scales: Sequence[float]) -> list[int]:
    """The rows whose scale differs from 1, i.e. that need an unconditional pass (from host-side scales)."""
    return [row for row, scale in enumerate(scales) if scale != 1.0]


def guided_velocity(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Condition,
    uncond: Condition,
    scales: torch.Tensor,
    guided: torch.Tensor | None,
    model_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """v = v_u + s·(v_c − v_u) per sample; rows with s == 1 skip the unconditional pass.

    `guided` holds the rows whose scale differs from 1 (`guided_rows`, built on the host: finding them from
    `scales` on the device would stall it every step), None when there are none. Conditional and
    unconditional rows share one forward call (one batch). The model sees x in `model_dtype` (its own, e.g.
    bf16); its velocity and the guidance combination are fp32.
    """
    dtype = model_dtype or x.dtype
    if guided is None:
        return model(x.to(dtype), t, **cond).float()
    x_all = torch.cat([x, x.index_select(0, guided)])
    t_all = torch.cat([t, t.index_select(0, guided)])
    v_all = model(x_all.to(dtype), t_all, **cat_conditions(cond, select_condition(uncond, guided))).float()
    v = v_all[: x.shape[0]]
    v_uncond = v_all[x.shape[0] :]
    s = scales.index_select(0, guided).view(-1, *([1] * (x.ndim - 1))).float()
    v_guided_rows = v_uncond + s * (v.index_select(0, guided) - v_uncond)
    return v.index_copy(0, guided, v_guided_rows)
