"""Flow-matching samplers against a data distribution whose exact velocity field is known (Gaussian data)."""

from __future__ import annotations

import pytest
import torch

from model.errors import InvalidInputError
from model.reference_flow import GaussianFlow
from model.scheduling import FlowMatchingScheduler, shift_timesteps

MU = torch.tensor([2.0, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([[1.5, 0.6], [0.6, 0.5]], dtype=torch.float64)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[ε − x₀ | x_t] for x₀ ~ N(μ, Σ), ε ~ N(0, I), x_t = (1 − t)x₀ + tε (same t for the batch)."""
    tt = float(t[0])
    eye = torch.eye(2, dtype=torch.float64)
    cov_t = (1 - tt) ** 2 * SIGMA + tt**2 * eye
    gain = (tt * eye - (1 - tt) * SIGMA) @ torch.linalg.inv(cov_t)
    return -MU + (x - (1 - tt) * MU) @ gain.T


def integrate(sampler: str, steps: int, shift: float, n: int = 20000, seed: int = 0) -> torch.Tensor:
    scheduler = FlowMatchingScheduler(shift=shift)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    ts = scheduler.timesteps(steps).double()
    stochastic = torch.full((n,), sampler == "euler_maruyama")
    for i in range(steps):
        t, t_next = ts[i].expand(n), ts[i + 1].expand(n)
        noise = torch.randn(n, 2, generator=gen, dtype=torch.float64) if sampler != "euler" else None
        x = scheduler.step(x, exact_velocity(x, t), t, t_next, stochastic, noise)
    return x


@pytest.mark.parametrize("shift", [1.0, 2.5])
def test_euler_ode_maps_noise_onto_the_data_distribution(shift: float) -> None:
    x = integrate("euler", steps=100, shift=shift)
    assert torch.allclose(x.mean(0), MU, atol=0.05), x.mean(0)
    assert torch.allclose(torch.cov(x.T), SIGMA, atol=0.06), torch.cov(x.T)


def test_euler_maruyama_sde_matches_the_data_distribution() -> None:
    x = integrate("euler_maruyama", steps=250, shift=2.5)
    assert torch.allclose(x.mean(0), MU, atol=0.05), x.mean(0)
    assert torch.allclose(torch.cov(x.T), SIGMA, atol=0.08), torch.cov(x.T)


def test_sde_is_stochastic_and_ode_is_not() -> None:
    a = integrate("euler_maruyama", steps=20, shift=1.0, n=8, seed=1)
    b = integrate("euler_maruyama", steps=20, shift=1.0, n=8, seed=2)
    assert not torch.allclose(a, b)
    scheduler = FlowMatchingScheduler()
    x, v = torch.randn(4, 2), torch.randn(4, 2)
    t, tn = torch.full((4,), 0.5), torch.full((4,), 0.4)
    out = scheduler.step(x, v, t, tn, torch.zeros(4, dtype=torch.bool), torch.randn(4, 2))
    assert torch.allclose(out, x - 0.1 * v)


def test_per_sample_timesteps_and_samplers_in_one_batch() -> None:
    """Rows at different t (and with different samplers) step exactly as they would alone."""
    scheduler = FlowMatchingScheduler()
    x, v, noise = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    t = torch.tensor([0.9, 0.5, 0.2])
    tn = torch.tensor([0.8, 0.3, 0.0])
    stochastic = torch.tensor([True, False, True])
    batched = scheduler.step(x, v, t, tn, stochastic, noise)
    for i in range(3):
        alone = scheduler.step(
            x[i : i + 1], v[i : i + 1], t[i : i + 1], tn[i : i + 1], stochastic[i : i + 1], noise[i : i + 1]
        )
        assert torch.allclose(batched[i], alone[0])


def test_timestep_grid_and_shift() -> None:
    scheduler = FlowMatchingScheduler(shift=2.5)
    ts = scheduler.timesteps(10)
    assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == 0.0
    assert bool((ts[:-1] > ts[1:]).all())
    # Shift 2.5 (= the paper's 0.4 in the t=0-is-noise convention) spends more of the grid near noise.
    assert float(ts[5]) > 0.5
    half = torch.tensor(0.5)
    assert torch.isclose(shift_timesteps(half, 2.5), torch.tensor(2.5 * 0.5 / (1 + 1.5 * 0.5)))
    # Paper convention check: 1 − shift_{2.5}(1 − u) == shift_{0.4}(u).
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(1 - shift_timesteps(1 - u, 2.5), shift_timesteps(u, 0.4))


def test_training_timesteps_are_in_range_and_shifted() -> None:
    scheduler = FlowMatchingScheduler(shift=2.5)
    t = scheduler.sample_training_timesteps(10000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert float(t.mean()) > 0.6  # logit-normal median 0.5, shifted towards noise


def test_interpolant_and_target() -> None:
    x0, noise = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    t = torch.tensor([0.0, 1.0])
    xt = FlowMatchingScheduler.interpolate(x0, noise, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[1], noise[1])
    assert torch.allclose(FlowMatchingScheduler.velocity_target(x0, noise), noise - x0)


@pytest.mark.parametrize("steps", [0, 251, 10000, -1])
def test_step_count_out_of_range_is_a_clear_error(steps: int) -> None:
    with pytest.raises(InvalidInputError, match="from 1 to 250"):
        FlowMatchingScheduler().timesteps(steps)


# --- a bf16 generator: the sampler state stays fp32 ---------------------------------------------------------
def test_a_bf16_generator_keeps_the_fp32_accuracy_of_a_250_step_ode() -> None:
    """With a bf16 state, t grid and dt, 54 of 250 intervals round to zero and the error grows ~16× (0.075
    against 0.0045 here); with an fp32 state only the generator's own bf16 rounding remains, and it averages
    out."""
    flow = GaussianFlow()
    fp32, bf16 = flow.ode_error(torch.float32), flow.ode_error(torch.bfloat16)
    assert fp32 < 0.01  # first-order Euler at 250 steps
    assert bf16 < 1.5 * fp32, (bf16, fp32)


# --- the SDE's diffusion form: SiT's g² = 2σ_t ("sigma") and g² = σ_t ("half-sigma") ---------------------------
@pytest.mark.parametrize(("form", "factor"), [("sigma", 2.0), ("half-sigma", 1.0)])
def test_each_sde_diffusion_form_matches_the_closed_form_gaussian_case(form: str, factor: float) -> None:
    """Through the real StepBatcher: both forms keep the data marginals N(μ_c, σ_c²), and each forgets the
    starting noise at its own exact rate (correlation exp(−(k/2)∫t/V dt), k = 2 or 1), which tells them apart."""
    flow = GaussianFlow()
    scheduler = FlowMatchingScheduler(shift=2.5, sde_diffusion=form)
    x, noise = flow.sample(scheduler, steps=100, n=64, stochastic=True)
    x, noise = x.transpose(0, 1).flatten(1), noise.transpose(0, 1).flatten(1)  # C × (n·G·G)
    assert torch.allclose(x.mean(1), flow.mean.flatten(), atol=0.03), x.mean(1)
    assert torch.allclose(x.std(1), flow.std.flatten(), rtol=0.03), x.std(1)
    corr = torch.stack([torch.corrcoef(torch.stack([x[c], noise[c]]))[0, 1] for c in range(x.shape[0])])
    expected = flow.sde_noise_correlation(factor)
    assert torch.allclose(corr, expected, atol=0.035), (corr, expected)
    other = flow.sde_noise_correlation(3.0 - factor)
    assert ((corr - other).abs() > 0.1).all(), (corr, other)  # the test does tell the two forms apart


def test_the_paper_presets_use_sits_sde_form_and_saved_models_keep_theirs() -> None:
    from model.presets import preset_config

    for preset in ("paper-imagenet", "paper-t2i"):
        assert FlowMatchingScheduler(**preset_config(preset)["scheduler"]).config.sde_diffusion == "sigma"
    # A scheduler_config.json written before the option existed loads with the form it was sampled with.
    assert FlowMatchingScheduler().config.sde_diffusion == "half-sigma"
    with pytest.raises(InvalidInputError, match="sde_diffusion"):
        FlowMatchingScheduler(sde_diffusion="linear")  # type: ignore[arg-type]
