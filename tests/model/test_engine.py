"""DenoisingEngine: whole jobs join between steps, leave when done or canceled, and match one-at-a-time runs."""

from __future__ import annotations

import pytest
import torch

from model import FAEPipeline
from model.engine import DenoisingEngine, EngineJob


@pytest.fixture(scope="module")
def pipe() -> FAEPipeline:
    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


def job(
    pipe: FAEPipeline, key: str, prompt: str, seed: int, steps: int, n: int = 1, scale: float = 1.0, **kw
):
    samples = pipe.prepare_samples(prompt, None, n, steps, scale, "constant", seed, key=key)
    return EngineJob(key, samples, **kw)


def alone(pipe: FAEPipeline, prompt: str, seed: int, steps: int, n: int = 1, scale: float = 1.0):
    kwargs = {"num_images": n, "num_inference_steps": steps, "guidance_scale": scale, "seed": seed}
    return pipe(prompt=prompt, output_type="pt", **kwargs).images


def test_jobs_joining_mid_flight_match_their_solo_images(pipe: FAEPipeline) -> None:
    engine = DenoisingEngine(pipe)
    progress: dict[str, list[int]] = {"a": [], "b": []}
    engine.add(job(pipe, "a", "red apple", 1, steps=5, n=2, on_step=lambda s, t: progress["a"].append(s)))
    results = {r.key: r for r in engine.step() + engine.step()}
    engine.add(
        job(pipe, "b", "running shoe", 7, steps=3, scale=2.5, on_step=lambda s, t: progress["b"].append(s))
    )
    assert engine.active_samples == 2
    results |= {r.key: r for r in engine.run_until_idle()}
    assert progress == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3]}
    assert results["a"].seeds == [1, 2] and results["b"].seeds == [7]
    torch.testing.assert_close(results["a"].images, alone(pipe, "red apple", 1, 5, n=2), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        results["b"].images, alone(pipe, "running shoe", 7, 3, scale=2.5), atol=1e-5, rtol=0
    )
    assert engine.idle


def test_cancel_from_the_step_callback_stops_only_that_job(pipe: FAEPipeline) -> None:
    engine = DenoisingEngine(pipe)
    engine.add(job(pipe, "stop", "blue whale", 3, steps=10, on_step=lambda s, t: s >= 2))
    engine.add(job(pipe, "go", "green tree", 4, steps=4))
    results = {r.key: r for r in engine.run_until_idle()}
    assert results["stop"].canceled and results["stop"].images is None
    assert not results["go"].canceled
    torch.testing.assert_close(results["go"].images, alone(pipe, "green tree", 4, 4), atol=1e-5, rtol=0)


def test_cancel_pending_and_running_jobs_by_key(pipe: FAEPipeline) -> None:
    engine = DenoisingEngine(pipe, max_batch_size=1)
    engine.add(job(pipe, "first", "sun", 1, steps=3))
    engine.add(job(pipe, "waiting", "moon", 2, steps=3))
    engine.step()
    assert engine.active_samples == 1  # the batch limit keeps "waiting" out
    assert engine.cancel("waiting").canceled
    assert engine.cancel("first").canceled and engine.idle
    assert engine.cancel("unknown") is None


def test_batch_limit_admits_whole_jobs_in_order(pipe: FAEPipeline) -> None:
    engine = DenoisingEngine(pipe, max_batch_size=3)
    engine.add(job(pipe, "two", "a", 1, steps=2, n=2))
    engine.add(job(pipe, "also-two", "b", 2, steps=2, n=2))
    engine.step()
    assert engine.last_batch_size == 2
    finished = engine.step()
    assert [r.key for r in finished] == ["two"]
    engine.step()
    assert engine.last_batch_size == 2 and not engine.idle
    assert [r.key for r in engine.step()] == ["also-two"]
