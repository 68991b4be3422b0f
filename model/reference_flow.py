"""A data distribution whose exact flow-matching velocity is known, for measuring samplers' numerical error.

Per-channel Gaussian data N(μ_c, σ_c²) under the linear interpolant x_t = (1 − t)·x₀ + t·ε has the velocity
v(x, t) = −μ + (t − (1 − t)σ²) / ((1 − t)²σ² + t²) · (x − (1 − t)μ), and its ODE carries the starting noise ε
exactly onto μ + σ·ε. The reverse SDE with diffusion g² = k·t keeps the marginals but forgets the starting noise:
x₀ and ε stay jointly Gaussian with correlation ρ_k = exp(−(k/2)·∫₀¹ t/((1 − t)²σ² + t²) dt)
= exp(−k·(πσ/2 − ln σ) / (2·(1 + σ²))) per channel (ρ = 1 for the ODE). The tests and the serving benchmark push it through the real `StepBatcher` and scheduler
with a "generator" of a chosen dtype, so the error measured is the sampler's and its state's, nothing else.
"""

from __future__ import annotations

import math

import torch

from .batching import Sample, StepBatcher
from .scheduling import FlowMatchingScheduler


class GaussianFlow:
    """N(μ_c, σ_c²) per channel on a C×G×G latent (μ and σ spread evenly over the given ranges)."""

    def __init__(
        self,
        channels: int = 4,
        grid: int = 8,
        mean: tuple[float, float] = (-1.0, 1.5),
        std: tuple[float, float] = (0.3, 1.2),
    ) -> None:
        self.shape = (channels, grid, grid)
        self.mean = torch.linspace(*mean, channels, dtype=torch.float64).view(1, channels, 1, 1)
        self.std = torch.linspace(*std, channels, dtype=torch.float64).view(1, channels, 1, 1)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact velocity, computed in float64 on x's device."""
        mean, var = self.mean.to(x.device), self.std.to(x.device) ** 2
        t, x = t.double().view(-1, 1, 1, 1), x.double()
        return -mean + (t - (1 - t) * var) / ((1 - t) ** 2 * var + t**2) * (x - (1 - t) * mean)

    def sde_noise_correlation(self, diffusion_factor: float) -> torch.Tensor:
        """Per channel (C,), the exact correlation of the SDE's output with its starting noise, g² = k·t."""
        std = self.std.flatten()
        integral = (math.pi / 2 * std - std.log()) / (1 + std**2)
        return torch.exp(-diffusion_factor / 2 * integral)

    def sample(
        self,
        scheduler: FlowMatchingScheduler,
        model_dtype: torch.dtype = torch.float32,
        steps: int = 250,
        n: int = 8,
        stochastic: bool = False,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, their starting noise), n×C×G×G each in float64, drawn through the real `StepBatcher` and
        `scheduler` with a generator in `model_dtype` that computes the exact velocity from its (rounded)
        input and returns it in its dtype; sample i uses seed i."""
        batcher = StepBatcher(scheduler, self.shape, device, model_dtype)
        label = {"class_labels": torch.zeros(1, dtype=torch.long)}
        batcher.add([Sample(seed, seed, steps, label, label, stochastic=stochastic) for seed in range(n)])

        def generator(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
            if x.dtype != model_dtype:
                raise AssertionError(f"the generator got {x.dtype}, not its own {model_dtype}")
            return self.velocity(x, t).to(model_dtype)

        latents: dict[int, torch.Tensor] = {}
        for _ in range(steps):
            latents |= {done.key: done.latent for done in batcher.step(generator)}
        x = torch.cat([latents[seed] for seed in range(n)]).double().cpu()
        # Each sample's starting noise is its seed's first draw on the batcher's generator device.
        noise_device = batcher.device if batcher.device.type in ("cpu", "cuda") else torch.device("cpu")
        noise = torch.cat(
            [
                torch.randn(
                    (1, *self.shape),
                    generator=torch.Generator(noise_device).manual_seed(seed),
                    device=noise_device,
                )
                for seed in range(n)
            ]
        )
        return x, noise.double().cpu()

    def ode_error(
        self,
        model_dtype: torch.dtype,
        steps: int = 250,
        n: int = 8,
        device: torch.device | str = "cpu",
        shift: float = 2.5,
    ) -> float:
        """Relative error of the Euler ODE through the real `StepBatcher` and scheduler (see `sample`)."""
        x, noise = self.sample(FlowMatchingScheduler(shift=shift), model_dtype, steps, n, device=device)
        exact = self.mean + self.std * noise
        return float((x - exact).norm() / exact.norm())
