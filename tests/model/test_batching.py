"""Step-level batching: samples (StepBatcher) and whole jobs (DenoisingBatcher) join and leave between steps
and still produce their one-at-a-time images."""

from __future__ import annotations

import pytest
import torch

from model import FAEPipeline
from model.batching import DenoisingBatcher, DenoisingJob, Sample, StepBatcher
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


# --- whole jobs -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t2i_pipe() -> FAEPipeline:
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
    return DenoisingJob(key, samples, **kw)


def alone_text(pipe: FAEPipeline, prompt: str, seed: int, steps: int, n: int = 1, scale: float = 1.0):
    kwargs = {"num_images": n, "num_inference_steps": steps, "guidance_scale": scale, "seed": seed}
    return pipe(prompt=prompt, output_type="pt", **kwargs).images


def test_jobs_joining_mid_flight_match_their_solo_images(t2i_pipe: FAEPipeline) -> None:
    batcher = DenoisingBatcher(t2i_pipe)
    progress: dict[str, list[int]] = {"a": [], "b": []}
    batcher.add(
        job(t2i_pipe, "a", "red apple", 1, steps=5, n=2, on_step=lambda s, t: progress["a"].append(s))
    )
    results = {r.key: r for r in batcher.step() + batcher.step()}
    batcher.add(
        job(
            t2i_pipe, "b", "running shoe", 7, steps=3, scale=2.5, on_step=lambda s, t: progress["b"].append(s)
        )
    )
    results |= {r.key: r for r in batcher.step()}
    assert batcher.last_batch_size == 3  # "b" joined the two running samples of "a"
    results |= {r.key: r for r in batcher.run_until_idle()}
    assert progress == {"a": [1, 2, 3, 4, 5], "b": [1, 2, 3]}
    assert results["a"].seeds == [1, 2] and results["b"].seeds == [7]
    torch.testing.assert_close(
        results["a"].images, alone_text(t2i_pipe, "red apple", 1, 5, n=2), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        results["b"].images, alone_text(t2i_pipe, "running shoe", 7, 3, scale=2.5), atol=1e-5, rtol=0
    )
    assert batcher.idle


def test_cancel_from_the_step_callback_stops_only_that_job(t2i_pipe: FAEPipeline) -> None:
    batcher = DenoisingBatcher(t2i_pipe)
    batcher.add(job(t2i_pipe, "stop", "blue whale", 3, steps=10, on_step=lambda s, t: s >= 2))
    batcher.add(job(t2i_pipe, "go", "green tree", 4, steps=4))
    results = {r.key: r for r in batcher.run_until_idle()}
    assert results["stop"].canceled and results["stop"].images is None
    assert not results["go"].canceled
    torch.testing.assert_close(
        results["go"].images, alone_text(t2i_pipe, "green tree", 4, 4), atol=1e-5, rtol=0
    )


def test_cancel_pending_and_running_jobs_by_key(t2i_pipe: FAEPipeline) -> None:
    batcher = DenoisingBatcher(t2i_pipe, max_batch_size=1)
    batcher.add(job(t2i_pipe, "first", "sun", 1, steps=3))
    batcher.add(job(t2i_pipe, "waiting", "moon", 2, steps=3))
    batcher.step()
    assert batcher.last_batch_size == 1  # the batch limit keeps "waiting" out
    assert batcher.cancel("waiting").canceled
    assert batcher.cancel("first").canceled and batcher.idle
    assert batcher.cancel("unknown") is None


def test_batch_limit_admits_whole_jobs_in_order(t2i_pipe: FAEPipeline) -> None:
    batcher = DenoisingBatcher(t2i_pipe, max_batch_size=3)
    batcher.add(job(t2i_pipe, "two", "a", 1, steps=2, n=2))
    batcher.add(job(t2i_pipe, "also-two", "b", 2, steps=2, n=2))
    batcher.step()
    assert batcher.last_batch_size == 2
    finished = batcher.step()
    assert [r.key for r in finished] == ["two"]
    batcher.step()
    assert batcher.last_batch_size == 2 and not batcher.idle
    assert [r.key for r in batcher.step()] == ["also-two"]


def test_a_full_batch_is_shared_among_owners(t2i_pipe: FAEPipeline) -> None:
    """One owner's burst queued first does not hold the batch while another owner's job waits: the next job
    admitted is the oldest of the owner with the fewest samples running."""
    batcher = DenoisingBatcher(t2i_pipe, max_batch_size=2)
    for i in range(3):
        batcher.add(job(t2i_pipe, f"a{i}", "a", i, steps=2, owner="tenant-a"))
    batcher.add(job(t2i_pipe, "b0", "b", 9, steps=2, owner="tenant-b"))
    batcher.step()
    assert batcher.last_batch_size == 2
    assert [r.key for r in batcher.step()] == ["a0", "b0"]  # FIFO alone would have run a0 and a1
    done = batcher.run_until_idle()
    assert [r.key for r in done] == ["a1", "a2"]


# --- no device→host syncs in the step loop ------------------------------------------------------------------
def three_part(pipe: FAEPipeline, seed: int, steps: int, n: int, sampler: str) -> dict:
    condition = {"class_labels": 3} if pipe.condition_type == "class" else {"prompt": "a red square"}
    return {
        **condition,
        "num_images": n,
        "num_inference_steps": steps,
        "guidance_scale": 3.0,
        "guidance_schedule": "fae-three-part",
        "seed": seed,
        "sampler": sampler,
    }


@pytest.mark.parametrize("preset", ["tiny", "tiny-t2i"])
def test_steps_never_read_the_device_back(
    preset: str, pipe: FAEPipeline, t2i_pipe: FAEPipeline, aten_ops: type
) -> None:
    """Masks, guided rows and timesteps are planned on the host and SDE noise is drawn at admission, so no
    step (admission, guided rows changing with the three-part schedule, rows leaving, decode) waits for the
    device; SDE and ODE samples mixed in one batch still give each request's images alone."""
    pipe = pipe if preset == "tiny" else t2i_pipe
    requests = {
        "ode": three_part(pipe, 1, 12, 2, "euler"),
        "sde": three_part(pipe, 2, 8, 1, "euler_maruyama"),
    }
    batcher = DenoisingBatcher(pipe)
    for key, request in requests.items():
        batcher.add(DenoisingJob(key, pipe.prepare_samples(**request, key=key)))
    results, syncs = {}, []
    while not batcher.idle:
        with aten_ops() as ops:
            results |= {r.key: r.images for r in batcher.step()}
        syncs.append(ops.syncs)
    assert syncs == [[]] * 12
    for key, request in requests.items():
        torch.testing.assert_close(results[key], pipe(**request, output_type="pt").images, atol=1e-5, rtol=0)
