"""Step-level batching: samples join and leave between steps and still produce their one-at-a-time images."""

from __future__ import annotations

import pytest
import torch

from model import FAEPipeline
from model.batching import Sample, StepBatcher
from model.guidance import GuidanceSchedule


@pytest.fixture(scope="module")
def pipe() -> FAEPipeline:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


class CountingModel:
    def __init__(self, pipe: FAEPipeline) -> None:
        self.pipe = pipe
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.pipe.generator(x, t, **cond)


def sample(
    pipe: FAEPipeline, key: str, label: int, seed: int, steps: int, scale: float = 1.0, sde: bool = False
):
    cond, uncond, _ = pipe.prepare_conditions(None, label, 1)
    return Sample(key, seed, steps, cond, uncond, GuidanceSchedule.constant(scale), sde)


def alone(pipe: FAEPipeline, label: int, seed: int, steps: int, scale: float = 1.0, sde: bool = False):
    out = pipe(
        class_labels=label,
        seed=seed,
        num_inference_steps=steps,
        guidance_scale=scale,
        sampler="euler_maruyama" if sde else "euler",
        output_type="pt",
    )
    return out.images


def run_to_completion(pipe: FAEPipeline, batcher: StepBatcher, model, joins: dict[int, list[Sample]]):
    finished = {}
    step = 0
    while len(batcher) or any(k >= step for k in joins):
        batcher.add(joins.pop(step, []))
        for done in batcher.step(model):
            finished[done.key] = (step, done.latent)
        step += 1
    return finished


def test_joins_leaves_and_mixed_step_counts_match_one_at_a_time(pipe: FAEPipeline) -> None:
    model = CountingModel(pipe)
    batcher = pipe.step_batcher()
    joins = {
        0: [sample(pipe, "a", 1, 11, steps=6), sample(pipe, "b", 2, 22, steps=3, scale=2.0)],
        2: [sample(pipe, "c", 3, 33, steps=4, sde=True)],
        5: [sample(pipe, "d", 4, 44, steps=2, scale=3.0)],
    }
    finished = run_to_completion(pipe, batcher, model, joins)
    assert {k: s for k, (s, _) in finished.items()} == {"a": 5, "b": 2, "c": 5, "d": 6}
    # One forward per step over everything active; guided rows (b, then d) add an unconditional row:
    # steps 0-1: a, b, b-uncond; 2: c joins; 3-4: a, c; 5: d joins with its uncond row; 6: d alone.
    assert model.batch_sizes == [3, 3, 4, 2, 2, 4, 2]
    for key, label, seed, steps, scale, sde in [
        ("a", 1, 11, 6, 1.0, False),
        ("b", 2, 22, 3, 2.0, False),
        ("c", 3, 33, 4, 1.0, True),
        ("d", 4, 44, 2, 3.0, False),
    ]:
        expected = alone(pipe, label, seed, steps, scale, sde)
        got = pipe.decode_latents(finished[key][1])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_cancel_mid_flight_removes_only_that_sample(pipe: FAEPipeline) -> None:
    batcher = pipe.step_batcher()
    batcher.add([sample(pipe, "keep", 5, 1, steps=4), sample(pipe, "drop", 6, 2, steps=4)])
    batcher.step(pipe.generator)
    assert batcher.progress("drop") == (1, 4)
    removed = batcher.remove(["drop"])
    assert [s.key for s in removed] == ["drop"] and batcher.keys == ["keep"]
    done = []
    while len(batcher):
        done += batcher.step(pipe.generator)
    assert [d.key for d in done] == ["keep"]
    torch.testing.assert_close(pipe.decode_latents(done[0].latent), alone(pipe, 5, 1, 4), atol=1e-5, rtol=0)


def test_empty_batcher_steps_to_nothing(pipe: FAEPipeline) -> None:
    batcher = pipe.step_batcher()
    assert batcher.step(pipe.generator) == [] and len(batcher) == 0
    batcher.add([sample(pipe, "x", 0, 0, steps=1)])
    assert [d.key for d in batcher.step(pipe.generator)] == ["x"]
    assert batcher.remove(["x"]) == [] and batcher.step(pipe.generator) == []
