"""Compiled, bucketed forwards on the CPU: the same logic the GPU uses, with CUDA graphs skipped."""

from __future__ import annotations

import pytest
import torch

from model import FAEPipeline
from model.batching import DenoisingBatcher, DenoisingJob
from model.compiled import BucketedForward, accelerate_pipeline, bucket_for


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
