"""Compiled, bucketed forwards on the CPU: the same logic the GPU uses, with CUDA graphs skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from model import FAEPipeline
from model.batching import DenoisingBatcher, DenoisingJob
from model.compiled import (
    CACHE_ARTIFACTS_FILE,
    BucketedForward,
    accelerate_pipeline,
    bucket_for,
    decode_chunk_size,
    example_generator_inputs,
    load_compile_cache,
    save_compile_cache,
    warm_accelerated,
)


def test_bucket_choice() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_for(9, (1, 2, 4, 8))


def test_padding_and_splitting_keep_rows_independent() -> None:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    eager = pipe.generator
    wrapped = BucketedForward(eager, buckets=(2, 4), compile=False)
    x, t = torch.randn(7, 4, 8, 8), torch.rand(7)
    labels = torch.arange(7) % 10
    torch.testing.assert_close(wrapped(x, t, class_labels=labels), eager(x, t, class_labels=labels))
    assert not wrapped.cuda_graphs  # CPU: graphs are skipped, the rest of the path is the same


@pytest.mark.slow
def test_compiled_batcher_matches_eager_pipeline() -> None:
    """torch.compile really runs (inductor on the CPU) and gives the eager images within float tolerance."""
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    fast = accelerate_pipeline(pipe, buckets=(4,), compile=True)
    batcher = DenoisingBatcher(
        pipe, forward=fast["generator"], decoders=(fast["feature_decoder"], fast["pixel_decoder"])
    )
    samples = pipe.prepare_samples(None, [1, 2], 1, 4, 2.0, "constant", [5, 6], key="j")
    batcher.add(DenoisingJob("j", samples))
    (result,) = batcher.run_until_idle()
    expected = pipe(
        class_labels=[1, 2], seed=[5, 6], num_inference_steps=4, guidance_scale=2.0, output_type="pt"
    )
    assert torch.isfinite(result.images).all()
    torch.testing.assert_close(result.images, expected.images, atol=1e-4, rtol=0)


def _tiny_with_blocks() -> FAEPipeline:
    """The tiny preset with non-zero weights everywhere (adaLN-Zero would make the blocks a no-op)."""
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return pipe


def test_decoder_buckets_stop_at_the_decode_chunk() -> None:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    fast = accelerate_pipeline(pipe, buckets=(2, 4, 8, 16, 32, 64, 128), compile=False)
    assert decode_chunk_size() == DenoisingBatcher(pipe).decode_batch_size == 32
    assert fast["generator"].buckets[-1] == 128
    assert fast["feature_decoder"].buckets == fast["pixel_decoder"].buckets == (2, 4, 8, 16, 32)


def test_one_compile_per_signature_serves_every_bucket_without_recompiling() -> None:
    """Warm-up compiles each module once per signature (plain and adapter-slotted generator calls), in the
    engine's inference mode; every batch size after that reuses those graphs. Dynamo's eager backend has
    inductor's guards without its compile time."""
    from torch._dynamo.utils import counters

    from model.adapters import AdapterSlots

    pipe = _tiny_with_blocks()
    AdapterSlots.attach(pipe.generator, 2, 2, max_batch=16)
    fast = accelerate_pipeline(pipe, buckets=(2, 4, 8), compile=True, backend="eager")
    before = counters["stats"]["unique_graphs"]
    warm_accelerated(pipe, fast)
    # generator plain + slotted, feature decoder, pixel decoder: four graphs for three buckets (was 3 × 4)
    assert counters["stats"]["unique_graphs"] - before == 4
    torch._dynamo.config.error_on_recompile = True  # set, not patched: tests below share the process
    try:
        with torch.inference_mode():
            for n in (1, 3, 5, 8, 11):
                x, t = torch.randn(n, 4, 8, 8), torch.rand(n)
                labels = torch.arange(n) % 10
                expected = pipe.generator(x, t, class_labels=labels)
                torch.testing.assert_close(fast["generator"](x, t, class_labels=labels), expected)
                slots = torch.zeros(n, dtype=torch.long)
                got = fast["generator"](x, t, class_labels=labels, adapter_slots=slots)
                torch.testing.assert_close(got, expected)
                fast["pixel_decoder"](fast["feature_decoder"](x))
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert counters["stats"]["unique_graphs"] - before == 4


@pytest.mark.slow
def test_inductor_compiles_the_generator_once_for_every_bucket() -> None:
    """Inductor itself (C++ on the CPU): one dynamic-batch graph, equal to eager at every batch size."""
    from torch._dynamo.utils import counters

    pipe = _tiny_with_blocks()
    fast = BucketedForward(pipe.generator, buckets=(2, 8), compile=True)
    args, kwargs = example_generator_inputs(pipe, 1)
    before = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        fast.warmup(args, kwargs)
        torch._dynamo.config.error_on_recompile = True
        try:
            for n in (1, 3, 8):
                x, t, labels = torch.randn(n, 4, 8, 8), torch.rand(n), torch.arange(n)
                got = fast(x, t, class_labels=labels)
                torch.testing.assert_close(
                    got, pipe.generator(x, t, class_labels=labels), atol=1e-5, rtol=1e-4
                )
        finally:
            torch._dynamo.config.error_on_recompile = False
    assert counters["stats"]["unique_graphs"] - before == 1


class _FakeGraphs:
    """Stands in for CUDA graphs on the CPU: records that capture and replay run inside the device guard.

    `stale`: replays return whatever the output buffer holds, like a graph captured on the wrong device
    (its kernels ran outside the capture, so replay recomputes nothing)."""

    def __init__(self, stale: bool = False) -> None:
        self.stale = stale
        self.inside: list[torch.device] = []
        self.captures = self.replays = 0

    @contextmanager
    def device(self, device: torch.device) -> Iterator[None]:
        self.inside.append(device)
        try:
            yield
        finally:
            self.inside.pop()

    def capture(self, fn: Callable[..., torch.Tensor], args: tuple, kwargs: dict) -> _FakeGraph:
        assert self.inside, "capture outside the module's device"
        self.captures += 1
        return _FakeGraph(self, fn, fn(*args, **kwargs))


class _FakeGraph:
    def __init__(self, owner: _FakeGraphs, fn: Callable[..., torch.Tensor], out: torch.Tensor) -> None:
        self.owner, self.fn, self.out = owner, fn, out

    def replay(self, args: tuple, kwargs: dict) -> torch.Tensor:
        assert self.owner.inside, "replay outside the module's device"
        self.owner.replays += 1
        if not self.owner.stale:
            self.out.copy_(self.fn(*args, **kwargs))
        return self.out


def test_graphs_are_captured_and_replayed_inside_the_modules_device() -> None:
    pipe = _tiny_with_blocks()
    graphs = _FakeGraphs()
    fast = BucketedForward(pipe.generator, buckets=(2, 4), compile=False, graphs=graphs)
    assert fast.cuda_graphs
    with torch.inference_mode():
        for n in (1, 2, 3, 4, 3):
            x, t, labels = torch.randn(n, 4, 8, 8), torch.rand(n), torch.arange(n)
            torch.testing.assert_close(
                fast(x, t, class_labels=labels), pipe.generator(x, t, class_labels=labels)
            )
    assert graphs.captures == 2 and graphs.replays == 5 and not graphs.inside
    assert fast.graph_fallbacks == 0


def test_a_stale_graph_is_logged_counted_and_replaced_by_the_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = _tiny_with_blocks()
    fallbacks: list[str] = []
    graphs = _FakeGraphs(stale=True)
    fast = BucketedForward(
        pipe.generator,
        buckets=(2, 4),
        compile=False,
        graphs=graphs,
        name="generator",
        on_graph_fallback=fallbacks.append,
    )
    with torch.inference_mode(), caplog.at_level(logging.ERROR, logger="model.compiled"):
        for seed in range(3):  # the first call checks the graph; later calls never replay it
            torch.manual_seed(seed)
            x, t, labels = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([seed, seed + 1])
            got = fast(x, t, class_labels=labels)
            torch.testing.assert_close(got, pipe.generator(x, t, class_labels=labels))
    assert fast.graph_fallbacks == 1 and fallbacks == ["generator"]
    assert graphs.captures == graphs.replays == 1
    assert "CUDA graph replay disagrees" in caplog.text


def test_compile_cache_artifacts_are_saved_whole_and_loaded_back(tmp_path: Path) -> None:
    """After an inductor compile, warm-up's artifacts land in the cache directory in one file that the next
    start loads; an unreadable file means a cold compile, never a failed start."""
    fn = torch.compile(lambda x: (x.sin() * 2 + 1).sum(1), fullgraph=True)
    with torch.inference_mode():
        fn(torch.randn(4, 8))
    written = save_compile_cache(tmp_path)
    path = tmp_path / CACHE_ARTIFACTS_FILE
    assert written > 0 and path.stat().st_size == written
    assert [p.name for p in tmp_path.iterdir()] == [CACHE_ARTIFACTS_FILE]  # no temporary file left behind
    assert load_compile_cache(tmp_path)
    path.write_bytes(b"torn")
    assert not load_compile_cache(tmp_path)
    assert not load_compile_cache(tmp_path / "empty")
