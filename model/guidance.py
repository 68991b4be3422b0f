"""Classifier-free guidance: per-interval scale schedules and the guided velocity of a mixed batch.

Guidance acts on all latent channels (not DiT's legacy first-3-channels slice). Each sample carries its own
schedule; at each step only samples whose current scale differs from 1 pay for an unconditional pass.

A schedule is a list of t intervals [t_min, t_max] (t = 1 is noise), each with its scale, and a default scale
elsewhere. The named ones: "constant"; the paper's ImageNet "fae-three-part" (0.9 on [0.9, 1], the given
scale on [0, 0.7], none between); its text-to-image "fae-t2i" (the given scale, 1.5 in the paper, on
[0, 0.9], none above). Intervals may touch but not overlap; at a shared end the higher interval's scale holds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import InvalidInputError

Condition = dict[str, torch.Tensor]
GUIDANCE_SCHEDULES = ("constant", "fae-three-part", "fae-t2i")
MAX_GUIDANCE_SCALE = 30.0
# Kept equal to core.contract.MAX_GUIDANCE_INTERVALS (tests/architecture/test_limits.py checks).
MAX_GUIDANCE_INTERVALS = 8


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
    def fae_t2i(cls, scale: float = 1.5) -> GuidanceSchedule:
        """The paper's text-to-image schedule: `scale` (1.5) for t ≤ 0.9, none above."""
        return cls((GuidanceInterval(0.9, 0.0, float(scale)),), default=1.0)

    @classmethod
    def from_intervals(
        cls, intervals: Sequence[tuple[float, float, float]], default: float = 1.0
    ) -> GuidanceSchedule:
        """`(t_min, t_max, scale)` intervals, `default` outside them; checked (see `check_intervals`)."""
        check_intervals(intervals)
        ordered = sorted(intervals, key=lambda interval: -interval[1])  # the higher one wins at a shared end
        return cls(
            tuple(GuidanceInterval(float(hi), float(lo), float(s)) for lo, hi, s in ordered), float(default)
        )

    @classmethod
    def named(
        cls, name: str, scale: float, intervals: Sequence[tuple[float, float, float]] | None = None
    ) -> GuidanceSchedule:
        """A request's schedule: a named one at `scale`, or `intervals` with `scale` outside them."""
        _check_scale(scale, "guidance_scale")
        if intervals is not None:
            if name != "constant":
                raise InvalidInputError(f"give guidance_intervals or the named schedule {name!r}, not both")
            return cls.from_intervals(intervals, default=scale)
        if name == "constant":
            return cls.constant(scale)
        if name == "fae-three-part":
            return cls.fae_three_part(scale)
        if name == "fae-t2i":
            return cls.fae_t2i(scale)
        raise InvalidInputError(
            f"unknown guidance schedule {name!r}; choose one of {', '.join(GUIDANCE_SCHEDULES)}"
        )


def _check_scale(scale: float, what: str) -> None:
    if not isinstance(scale, (int, float)) or not 0.0 <= scale <= MAX_GUIDANCE_SCALE:
        raise InvalidInputError(f"{what} must be between 0 and {MAX_GUIDANCE_SCALE:g}, got {scale!r}")


def check_intervals(intervals: Sequence[tuple[float, float, float]]) -> None:
    """1 to 8 intervals, each 0 ≤ t_min < t_max ≤ 1 with a scale from 0 to 30, none overlapping another
    (touching is fine)."""
    if not 1 <= len(intervals) <= MAX_GUIDANCE_INTERVALS:
        raise InvalidInputError(
            f"give 1 to {MAX_GUIDANCE_INTERVALS} guidance intervals, got {len(intervals)}"
        )
    for i, interval in enumerate(intervals):
        if len(interval) != 3:
            raise InvalidInputError(f"guidance interval {i} must be (t_min, t_max, scale), got {interval!r}")
        t_min, t_max, scale = interval
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in interval):
            raise InvalidInputError(f"guidance interval {i} must hold finite numbers, got {interval!r}")
        if not 0.0 <= t_min < t_max <= 1.0:
            raise InvalidInputError(
                f"guidance interval {i} needs 0 <= t_min < t_max <= 1 (t = 1 is noise), got [{t_min}, {t_max}]"
            )
        _check_scale(scale, f"guidance interval {i}'s scale")
    ordered = sorted(intervals, key=lambda interval: interval[0])
    for low, high in itertools.pairwise(ordered):
        if high[0] < low[1]:
            raise InvalidInputError(
                f"guidance intervals [{low[0]}, {low[1]}] and [{high[0]}, {high[1]}] overlap"
            )


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
