"""Negative prompts: the prompt's encoding replaces the empty prompt's as the unconditional branch of guidance,
per sample, so requests with and without one share a step batch and keep their one-at-a-time images."""

from __future__ import annotations

import pytest
import torch

from model import FAEPipeline
from model.batching import DenoisingBatcher, DenoisingJob
from model.errors import InvalidInputError


def perturbed(preset: str) -> FAEPipeline:
    """A tiny pipeline whose generator depends on its condition (the zero-initialised outputs of a fresh one
    would not)."""
    pipe = FAEPipeline.from_preset(preset, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def t2i_pipe() -> FAEPipeline:
    return perturbed("tiny-t2i")


def images(pipe: FAEPipeline, negative_prompt: str | None, scale: float = 4.0) -> torch.Tensor:
    out = pipe(
        prompt="red apple",
        negative_prompt=negative_prompt,
        num_inference_steps=4,
        guidance_scale=scale,
        seed=5,
        output_type="pt",
    )
    return out.images


def test_a_negative_prompt_changes_the_guided_image(t2i_pipe: FAEPipeline) -> None:
    plain, negative = images(t2i_pipe, None), images(t2i_pipe, "blurry, green")
    assert (plain - negative).abs().max() > 1e-3
    assert not torch.equal(images(t2i_pipe, "blurry, green"), images(t2i_pipe, "a dark room"))
    # without guidance the unconditional branch is never run: a negative prompt has nothing to replace
    torch.testing.assert_close(images(t2i_pipe, None, 1.0), images(t2i_pipe, "blurry", 1.0), atol=0, rtol=0)


def test_without_one_the_unconditional_branch_is_the_empty_prompt(t2i_pipe: FAEPipeline) -> None:
    (without,) = t2i_pipe.prepare_samples("red apple", None, 1, 4, 4.0, "constant", 5)
    (with_negative,) = t2i_pipe.prepare_samples(
        "red apple", None, 1, 4, 4.0, "constant", 5, negative_prompt="x"
    )
    empty = t2i_pipe.encode_text([""])
    for name, value in without.uncond.items():
        torch.testing.assert_close(value, empty[name], atol=0, rtol=0)
    negative = t2i_pipe.encode_text(["x"])
    for name, value in with_negative.uncond.items():
        torch.testing.assert_close(value, negative[name], atol=0, rtol=0)
    for name, value in without.cond.items():  # the conditional branch is the prompt's either way
        torch.testing.assert_close(value, with_negative.cond[name], atol=0, rtol=0)


def test_batched_with_and_without_a_negative_prompt_match_their_solo_images(t2i_pipe: FAEPipeline) -> None:
    batcher = DenoisingBatcher(t2i_pipe)
    for key, negative in (("plain", None), ("negative", "blurry, green")):
        samples = t2i_pipe.prepare_samples(
            "red apple", None, 1, 4, 4.0, "constant", 5, key=key, negative_prompt=negative
        )
        batcher.add(DenoisingJob(key, samples))
    results = {r.key: r.images for r in batcher.run_until_idle()}
    assert batcher.last_batch_size == 2  # one guided call for both
    torch.testing.assert_close(results["plain"], images(t2i_pipe, None), atol=1e-5, rtol=0)
    torch.testing.assert_close(results["negative"], images(t2i_pipe, "blurry, green"), atol=1e-5, rtol=0)


def test_class_models_and_empty_negative_prompts_are_refused(t2i_pipe: FAEPipeline) -> None:
    class_pipe = FAEPipeline.from_preset("tiny", seed=0)
    with pytest.raises(InvalidInputError, match="negative_prompt needs a text-conditional model"):
        class_pipe(class_labels=1, negative_prompt="blurry", num_inference_steps=1)
    with pytest.raises(InvalidInputError, match="non-empty"):
        t2i_pipe(prompt="red apple", negative_prompt="  ", num_inference_steps=1)
