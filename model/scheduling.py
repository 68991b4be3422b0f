"""Flow matching: the linear interpolant, the training timestep distribution and the Euler samplers.

Convention (the paper's α_t = 1 − t, σ_t = t): x_t = (1 − t)·x₀ + t·ε, t = 1 is noise, t = 0 is data, and the
model predicts the velocity v = ε − x₀ = dx_t/dt. Sampling integrates from t = 1 down to t = 0.

Timestep shift: t' = s·t / (1 + (s − 1)·t) with s ≥ 1 spends more steps near noise. The paper's "shift 0.4"
is LightningDiT's convention (t = 0 noise); in this convention it is s = 1 / 0.4 = 2.5.

SDE diffusion form (`sde_diffusion`): the Euler–Maruyama sampler runs the reverse SDE with diffusion g²;
"sigma" is SiT/LightningDiT's `diffusion_form="sigma"` (w_t = σ_t = t, drift v + w·score, noise √(2w·dt), so
g² = 2t), the sampler behind the paper's no-guidance numbers; "half-sigma" (g² = t) injects half that noise
variance (this project's first sampler, kept for models saved with it). Both keep the data marginals.

All step functions take per-sample timesteps (shape B), so samples at different steps share one batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import InvalidInputError

SAMPLERS = ("euler", "euler_maruyama")
# g² / t of each SDE diffusion form (g² = factor · σ_t, σ_t = t): see the module docstring.
SDE_DIFFUSION_FACTORS = {"sigma": 2.0, "half-sigma": 1.0}
MAX_STEPS = 250  # Kept equal to core.contract.MAX_STEPS (tests/architecture/test_limits.py checks).


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1.0 + (shift - 1.0) * t)


def check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or not 1 <= num_steps <= MAX_STEPS:
        raise InvalidInputError(
            f"num_inference_steps must be an integer from 1 to {MAX_STEPS}, got {num_steps!r}"
        )


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise InvalidInputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


class FlowMatchingScheduler(SchedulerMixin, ConfigMixin):
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(
        self,
        shift: float = 2.5,
        train_timestep_distribution: Literal["uniform", "logit_normal"] = "logit_normal",
        train_shift: float | None = None,
        sde_last_step_mean: bool = True,
        sde_diffusion: Literal["sigma", "half-sigma"] = "half-sigma",
        supported_steps: list[int] | None = None,
        distilled_guidance: float | None = None,
    ) -> None:
        # The class default stays "half-sigma" so that saved models (their scheduler_config.json has no
        # `sde_diffusion`) sample as before; the paper presets set "sigma" (model/preset_configs.py).
        if shift <= 0:
            raise InvalidInputError(f"timestep shift must be positive, got {shift}")
        # A few-step distilled generator (model/training/distill.py) was trained at these step counts only,
        # with guidance `distilled_guidance` built in (one call per step, no unconditional pass).
        if supported_steps is not None and (
            not supported_steps
            or any(not isinstance(n, int) or not 1 <= n <= MAX_STEPS for n in supported_steps)
        ):
            raise InvalidInputError(
                f"supported_steps must be step counts from 1 to {MAX_STEPS}, got {supported_steps}"
            )
        if sde_diffusion not in SDE_DIFFUSION_FACTORS:
            raise InvalidInputError(
                f"unknown sde_diffusion {sde_diffusion!r}; choose one of {', '.join(SDE_DIFFUSION_FACTORS)}"
            )

    def check_supported(
        self, num_steps: int, guided: bool = False, sampler: str = "euler", start_t: float = 1.0
    ) -> None:
        """A distilled model's limits: its step counts, no guidance of the request's own (`guided`: a scale
        other than 1, intervals or a named schedule), the deterministic sampler, and sampling from pure noise
        (`start_t`: where image-to-image starts, its strength; 1 for plain generation)."""
        supported = self.config.get("supported_steps")
        # The student was trained on the grid `timesteps(n)` from t = 1 only: image-to-image would run it on
        # `start_grid` timesteps it never saw (a silently wrong image). Strength 1 is plain generation (its own
        # grid), and strength 0 is reconstruction (encode/decode, the generator never runs): both stay allowed.
        if supported and 0.0 < start_t < 1.0:
            raise InvalidInputError(
                "this few-step model generates from pure noise only: image-to-image needs strength 1 "
                f"(plain generation) or 0 (reconstruction), got strength {start_t:g}"
            )
        if supported and num_steps not in supported:
            raise InvalidInputError(
                f"this few-step model supports num_inference_steps {', '.join(map(str, supported))}, "
                f"got {num_steps}"
            )
        distilled = self.config.get("distilled_guidance")
        if distilled is not None and guided:
            raise InvalidInputError(
                f"this model has guidance {distilled:g} distilled in (one call per step): leave guidance_scale "
                "at 1, with no guidance intervals, schedule or negative prompt"
            )
        if supported and sampler != "euler":
            raise InvalidInputError("a few-step distilled model samples with 'euler' only")

    # --- training -------------------------------------------------------------------------------
    def sample_training_timesteps(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training t ~ the base distribution, then shifted (paper: the shift helps training as well)."""
        if self.config.train_timestep_distribution == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            t = torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
        shift = self.config.train_shift if self.config.train_shift is not None else self.config.shift
        return shift_timesteps(t, shift)

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1.0 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    # --- sampling -------------------------------------------------------------------------------
    def timesteps(self, num_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """num_steps + 1 decreasing values from 1 to 0 (shifted)."""
        check_steps(num_steps)
        base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        return shift_timesteps(base, self.config.shift).to(device=device, dtype=torch.float32)

    def step(
        self,
        x: torch.Tensor,
        velocity: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        stochastic: torch.Tensor,
        noise: torch.Tensor | None = None,
        dt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step per sample from t to t_next < t.

        Euler (ODE): x + (t_next − t)·v. Euler–Maruyama (SDE) with diffusion g² = k·t (k = 2 for "sigma",
        1 for "half-sigma") runs the reverse-time SDE dx = [−v + ½·g²·s]dτ + g·dW (τ = 1 − t), where the score
        s = −(x + (1 − t)·v)/t; the t in g² and 1/t cancel, so ½·g²·s = −(k/2)·(x + (1 − t)·v). For k = 2
        this is SiT's drift v + σ·score with noise √(2σ·dt). The final step to t = 0 adds no noise (the
        "last step mean" of SiT). `stochastic` is a bool mask (B,) selecting SDE samples; pass `noise` only
        when some sample is stochastic (the caller knows on the host: reading the mask would stall the device).
        `dt` = t − t_next when the caller has it more precisely (from float64 grids on the host).

        The arithmetic runs in at least fp32 whatever x's dtype: in bf16, a 250-step grid has zero-length and
        doubled intervals, and Euler increments fall below x's rounding step.
        """
        dtype = torch.promote_types(x.dtype, torch.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        x, velocity = x.to(dtype), velocity.to(dtype)
        t_ = t.view(shape).to(dtype)
        dt = (t_ - t_next.view(shape).to(dtype)) if dt is None else dt.view(shape).to(dtype)  # > 0
        ode = x - dt * velocity
        if noise is None:
            return ode
        k = SDE_DIFFUSION_FACTORS[self.config.sde_diffusion]
        drift = -velocity - 0.5 * k * (x + (1.0 - t_) * velocity)
        diffusion = torch.sqrt(torch.clamp(k * t_ * dt, min=0.0))
        last = (
            (t_next <= 0).view(shape)
            if self.config.sde_last_step_mean
            else torch.zeros_like(dt, dtype=torch.bool)
        )
        sde = x + drift * dt + torch.where(last, torch.zeros_like(noise), diffusion * noise.to(dtype))
        return torch.where(stochastic.view(shape), sde, ode)
