"""The generation engine on the real tiny model: progress, cancel between steps, seeds, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.errors import GenerationCanceled, InvalidInputError
from worker.engine import AdapterSpec, Engine, EngineHooks, GenerationRequest, UnknownModelError, warm_up


@pytest.fixture
def slow_engine(tiny_pipeline: Any) -> Iterator[Engine]:
    """Steps take at least 10 ms, so a caller polling every few ms sees every one of them."""
    engine = Engine({"tiny": tiny_pipeline}, hooks=EngineHooks(step_delay_s=0.01))
    try:
        yield engine
    finally:
        engine.close()


def test_progress_is_reported_on_the_callers_thread_with_eta(slow_engine: Engine) -> None:
    seen: list[tuple[int, int, float | None]] = []
    threads: set[str] = set()

    def on_progress(step: int, total: int, eta: float | None) -> None:
        seen.append((step, total, eta))
        threads.add(threading.current_thread().name)

    result = slow_engine.run(
        GenerationRequest(class_label=2, n=2, steps=5, seed=7), on_progress, poll_s=0.002
    )
    steps = [step for step, _, _ in seen]
    assert steps == sorted(set(steps)) and steps[-1] == 5 and len(steps) >= 3  # monotone, ends at the last
    assert all(total == 5 for _, total, _ in seen)
    assert all(eta is not None and eta >= 0 for _, _, eta in seen) and seen[-1][2] == 0
    assert threads == {threading.current_thread().name}  # never the device thread
    assert result.model == "tiny" and result.steps_run == 5 and result.seeds == [7, 8]
    assert len(result.images) == 2 and result.images[0].size == (32, 32)
    assert result.denoise_s > 0 and result.decode_s >= 0


def test_same_seed_same_images(engine: Engine) -> None:
    request = GenerationRequest(class_label=4, steps=3, seed=11)
    first, second = engine.run(request), engine.run(request)
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    other = engine.run(GenerationRequest(class_label=4, steps=3, seed=12))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


def test_cancel_check_stops_between_steps(slow_engine: Engine) -> None:
    seen: list[int] = []
    with pytest.raises(GenerationCanceled):
        slow_engine.run(
            GenerationRequest(class_label=0, steps=50, seed=1),
            on_progress=lambda step, total, eta: seen.append(step),
            should_cancel=lambda: bool(seen) and seen[-1] >= 3,
            poll_s=0.002,
        )
    assert 3 <= seen[-1] < 50  # stopped a step or two after the check said so, far from the end


def test_handle_cancel_from_another_thread(engine: Engine) -> None:
    handle = engine.submit(GenerationRequest(class_label=0, steps=250, seed=1))
    for _ in range(3000):  # bounded: about 30 s
        if handle.progress is not None:
            break
        threading.Event().wait(0.01)
    assert handle.progress is not None
    handle.cancel()
    with pytest.raises(GenerationCanceled):
        handle.result(timeout=30)
    # The engine thread carries on with the next request.
    assert engine.run(GenerationRequest(class_label=0, steps=1, seed=1)).steps_run == 1


def test_bad_requests_raise_invalid_input(engine: Engine) -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        engine.submit(GenerationRequest(model="nope", class_label=0))
    with pytest.raises(InvalidInputError, match="out of range"):
        engine.run(GenerationRequest(class_label=99, steps=1))
    with pytest.raises(InvalidInputError, match="class-conditional"):
        engine.run(GenerationRequest(prompt="a cat", steps=1))


def test_warmup_sets_ready_and_exclusive_runs_on_engine_thread(engine: Engine) -> None:
    assert not engine.ready
    assert warm_up(engine) > 0
    assert engine.ready
    names = engine.run_exclusive(None, lambda pipe: (threading.current_thread().name, pipe.num_classes))
    assert names == ("fae-engine", 10)


def test_a_missing_adapter_is_invalid_input(engine: Engine, tmp_path: Path) -> None:
    request = GenerationRequest(class_label=0, steps=1, adapter=AdapterSpec("a1", tmp_path / "missing"))
    with pytest.raises(InvalidInputError):
        engine.run(request)
    assert engine.run(GenerationRequest(class_label=0, steps=1)).steps_run == 1


def run_together(engine: Engine, jobs: list[GenerationRequest]) -> list[Any]:
    """Submit `jobs` while the engine thread is held on an exclusive call, so they are admitted in the same
    round (and batched together), then release it and wait for every result."""
    gate = threading.Event()
    blocker = threading.Thread(target=engine.run_exclusive, args=(None, lambda pipe: gate.wait(10)))
    blocker.start()
    handles = [engine.submit(job) for job in jobs]
    gate.set()
    blocker.join(10)
    return [h.result(timeout=30) for h in handles]


def test_concurrent_requests_share_denoising_steps(tiny_pipeline: Any) -> None:
    """Two jobs submitted together are denoised in the same generator calls (step-level batching) and still
    give their one-at-a-time images."""
    from core import metrics

    engine = Engine({"tiny": tiny_pipeline}, max_batch_size=8)
    try:
        alone = [engine.run(GenerationRequest(class_label=c, steps=4, seed=s)) for c, s in ((1, 5), (2, 6))]
        before = _batch_size_sum(metrics)
        together = run_together(
            engine, [GenerationRequest(class_label=c, steps=4, seed=s) for c, s in ((1, 5), (2, 6))]
        )
        # 4 steps of a batch of 2 rows: the batch-size histogram grew by 8, not 2 × 4 separate rows of 1.
        assert _batch_size_sum(metrics) - before == 8
        assert _batch_size_count(metrics) >= 4
        for a, b in zip(alone, together, strict=True):
            diff = np.abs(np.asarray(a.images[0], dtype=int) - np.asarray(b.images[0], dtype=int))
            assert diff.max() <= 1  # identical up to float reassociation in the batched matmul
    finally:
        engine.close()


def test_jobs_with_different_adapters_share_denoising_steps_with_slots(tmp_path: Path) -> None:
    """With adapter slots, two jobs with different adapters run in the same generator calls and each still gets
    its adapter's one-at-a-time images; the slots are given back when the jobs finish."""
    from core import metrics

    pipe, specs = _pipeline_with_adapters(tmp_path)
    engine = Engine({"tiny": pipe}, max_batch_size=8, adapter_slots=4, adapter_max_rank=4)
    jobs = [GenerationRequest(class_label=1, steps=4, seed=5, adapter=spec) for spec in specs]
    try:
        alone = [engine.run(job) for job in jobs]
        base = engine.run(GenerationRequest(class_label=1, steps=4, seed=5))
        before = _batch_size_sum(metrics)
        together = run_together(engine, jobs)
        assert _batch_size_sum(metrics) - before == 8  # 4 steps of one batch of 2 rows
        images = [np.asarray(r.images[0], dtype=int) for r in (*alone, *together, base)]
        assert np.abs(images[0] - images[2]).max() <= 1 and np.abs(images[1] - images[3]).max() <= 1
        assert np.abs(images[0] - images[1]).max() > 8 and np.abs(images[0] - images[4]).max() > 8
        slots = engine._slots["tiny"]
        assert all(slots.users(slots.slot_of(spec.adapter_id)) == 0 for spec in specs)
    finally:
        engine.close()


def _pipeline_with_adapters(directory: Path) -> tuple[Any, list[AdapterSpec]]:
    """A fresh tiny pipeline whose blocks matter, and two random adapters for it (brand-a, brand-b)."""
    import copy

    import torch

    from model import FAEPipeline
    from model.adapters import inject, lora_config, save_adapter
    from model.fingerprint import module_fingerprint

    pipe = FAEPipeline.from_preset("tiny", seed=0)
    with torch.no_grad():  # adaLN-Zero: an untrained generator ignores its blocks (and so its adapters)
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    specs = []
    for seed, name in enumerate(("brand-a", "brand-b")):
        generator = copy.deepcopy(pipe.generator)
        torch.manual_seed(seed)
        inject(generator, lora_config(2, 8.0), name)
        with torch.no_grad():
            for param_name, p in generator.named_parameters():
                if "lora_B" in param_name:
                    p.normal_(0.0, 1.0)  # strong enough to move a 4-step tiny image well past rounding
        out = save_adapter(directory / name, generator, name, 2, 8.0, module_fingerprint(pipe.generator), {})
        specs.append(AdapterSpec(name, out))
    return pipe, specs


def test_a_job_waits_for_an_adapter_slot_when_all_are_held(tmp_path: Path) -> None:
    """One adapter slot, two adapters submitted together: the second job waits for the first to finish."""
    pipe, specs = _pipeline_with_adapters(tmp_path)
    engine = Engine({"tiny": pipe}, max_batch_size=8, adapter_slots=2, adapter_max_rank=2)
    jobs = [GenerationRequest(class_label=1, steps=3, seed=5, adapter=spec) for spec in specs]
    try:
        together = run_together(engine, jobs)
        alone = engine.run(jobs[1])
        assert [r.steps_run for r in together] == [3, 3]
        assert np.array_equal(np.asarray(together[1].images[0]), np.asarray(alone.images[0]))
    finally:
        engine.close()


def _batch_size_sum(metrics: Any) -> float:
    return _sample(metrics, "_sum")


def _batch_size_count(metrics: Any) -> float:
    return _sample(metrics, "_count")


def _sample(metrics: Any, suffix: str) -> float:
    for family in metrics.BATCH_SIZE.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                return sample.value
    raise AssertionError(f"fae_batch_size{suffix} not exported")


def test_same_adapter_at_two_scales_without_slots_keeps_each_scale(tmp_path: Path) -> None:
    """Peft path (slots off): two groups share one adapter at different scales; each job gets its own scale."""
    import dataclasses

    pipe, specs = _pipeline_with_adapters(tmp_path)
    engine = Engine({"tiny": pipe}, max_batch_size=8, adapter_slots=0)
    try:
        half = GenerationRequest(
            class_label=1, steps=4, seed=5, adapter=dataclasses.replace(specs[0], scale=0.5)
        )
        full = GenerationRequest(class_label=1, steps=4, seed=5, adapter=specs[0])
        alone = [engine.run(half), engine.run(full)]
        together = run_together(engine, [half, full])

        def pixels(result: Any) -> np.ndarray:
            return np.asarray(result.images[0], dtype=int)

        assert np.abs(pixels(alone[0]) - pixels(alone[1])).max() > 5  # the scale matters
        for a, b in zip(alone, together, strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1
    finally:
        engine.close()


@pytest.mark.slow
def test_compiled_engine_serves_every_batch_shape_without_recompiling(tmp_path: Path) -> None:
    """Compile on: after warm-up, requests of several sizes, with and without guidance, with and without an
    adapter, run the graphs warm-up compiled. Dynamo's eager backend keeps the guards inductor has (grad mode,
    shapes, keyword names) without its C++ compile time."""
    import torch
    from torch._dynamo.utils import counters

    from model.compiled import accelerate_pipeline

    pipe, specs = _pipeline_with_adapters(tmp_path)
    fast = accelerate_pipeline(pipe, buckets=(2, 4, 8), compile=True, backend="eager")
    engine = Engine(
        {"tiny": pipe}, max_batch_size=4, accelerated={"tiny": fast}, adapter_slots=2, adapter_max_rank=2
    )
    try:
        warm_up(engine)
        graphs = counters["stats"]["unique_graphs"]
        jobs = [
            GenerationRequest(class_label=1, n=n, steps=2, seed=n, guidance_scale=scale)
            for n in (1, 3, 4)
            for scale in (1.0, 3.0)
        ]
        jobs.append(GenerationRequest(class_label=2, n=2, steps=2, seed=9, adapter=specs[0]))
        # Set, not patched: config.patch is thread-local, and the engine thread compiles.
        torch._dynamo.config.error_on_recompile = True  # a recompile fails the request
        alone = [engine.run(job) for job in jobs]
        together = run_together(engine, jobs[:3])
        assert [len(r.images) for r in alone] == [1, 1, 3, 3, 4, 4, 2] and len(together) == 3
        assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled after warm-up
    finally:
        torch._dynamo.config.error_on_recompile = False
        engine.close()


def test_prompts_admitted_together_are_encoded_in_one_call() -> None:
    """Text conditioning off the per-request path: jobs admitted in the same round share one text-encoder call,
    the empty prompt (the unconditional branch) is encoded once per model, and the images equal each alone."""
    from model import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    calls: list[list[str]] = []
    encode = pipe.text_encoder.encode

    def counting_encode(prompts: list[str]) -> Any:
        calls.append(list(prompts))
        return encode(prompts)

    pipe.text_encoder.encode = counting_encode
    engine = Engine({"t2i": pipe})
    try:
        jobs = [
            GenerationRequest(prompt="red apple", n=2, steps=3, seed=1, guidance_scale=3.0),
            GenerationRequest(prompt="blue heart", steps=3, seed=2, guidance_scale=3.0),
            GenerationRequest(prompt="rocket", steps=3, seed=3),
        ]
        together = run_together(engine, jobs)
        assert calls == [["red apple", "red apple", "blue heart", "rocket"], [""]]
        calls.clear()
        alone = [engine.run(job) for job in jobs]
        assert calls == [["red apple", "red apple"], ["blue heart"], ["rocket"]]  # no second null encoding
    finally:
        engine.close()
    for batched, single in zip(together, alone, strict=True):
        for a, b in zip(batched.images, single.images, strict=True):
            assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1


def test_a_job_canceled_while_waiting_for_room_leaves_at_once(tiny_pipeline: Any) -> None:
    """With the batch full, a waiting job's cancel takes effect before it ever runs a step."""
    engine = Engine({"tiny": tiny_pipeline}, max_batch_size=1, hooks=EngineHooks(step_delay_s=0.01))
    try:
        running = engine.submit(GenerationRequest(class_label=0, steps=250, seed=1))
        waiting = engine.submit(GenerationRequest(class_label=1, steps=250, seed=2))
        for _ in range(3000):  # bounded: about 30 s
            if running.progress is not None:
                break
            threading.Event().wait(0.01)
        waiting.cancel()
        with pytest.raises(GenerationCanceled, match="after step 0"):
            waiting.result(timeout=30)
        assert waiting.progress is None  # never took a step
        assert running.progress is not None and running.progress[0] < 250  # the running job carries on
        running.cancel()
        with pytest.raises(GenerationCanceled):
            running.result(timeout=30)
    finally:
        engine.close()
