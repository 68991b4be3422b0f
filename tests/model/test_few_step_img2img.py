"""A few-step distilled model generates from pure noise on its trained grid only: image-to-image (strength in
(0, 1)) would run it on timesteps it never saw, so the model stack refuses it, naming `strength`."""

from __future__ import annotations

import PIL.Image
import pytest

from model.errors import InvalidInputError
from model.pipeline import FAEPipeline
from model.scheduling import FlowMatchingScheduler


def _few_step(pipe: FAEPipeline) -> FAEPipeline:
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    pipe.scheduler = FlowMatchingScheduler(**{**config, "supported_steps": [1, 2, 4]})
    return pipe


@pytest.fixture(scope="module")
def student() -> FAEPipeline:
    return _few_step(FAEPipeline.from_preset("tiny", seed=0))


@pytest.fixture(scope="module")
def image(student: FAEPipeline) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (student.image_size, student.image_size), (200, 40, 40))


def test_check_supported_refuses_a_start_below_noise() -> None:
    scheduler = FlowMatchingScheduler(supported_steps=[1, 2, 4])
    for start_t in (0.6, 0.01, 0.999):
        with pytest.raises(InvalidInputError, match="strength"):
            scheduler.check_supported(2, start_t=start_t)
    scheduler.check_supported(2, start_t=1.0)  # plain generation: its own grid
    scheduler.check_supported(2, start_t=0.0)  # reconstruction: the generator never runs
    FlowMatchingScheduler().check_supported(7, start_t=0.6)  # a full model runs image-to-image


def test_the_pipeline_refuses_image_to_image(student: FAEPipeline, image: PIL.Image.Image) -> None:
    with pytest.raises(ValueError, match=r"strength 0\.6"):
        student(class_labels=1, num_inference_steps=2, image=image, strength=0.6)
    with pytest.raises(ValueError, match="strength"):
        student.prepare_samples(class_labels=1, num_inference_steps=2, image=image, strength=0.5)


def test_strength_one_and_zero_stay_allowed(student: FAEPipeline, image: PIL.Image.Image) -> None:
    out = student(class_labels=1, num_inference_steps=2, image=image, strength=1.0, output_type="pt", seed=0)
    plain = student(class_labels=1, num_inference_steps=2, output_type="pt", seed=0)
    assert out.images.shape == plain.images.shape
    recon = student(class_labels=1, num_inference_steps=2, image=image, strength=0.0, output_type="pt")
    assert recon.images.shape[0] == 1


def test_a_full_model_still_runs_image_to_image(image: PIL.Image.Image) -> None:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    samples = pipe.prepare_samples(class_labels=1, num_inference_steps=4, image=image, strength=0.5)
    assert samples[0].start_t == 0.5 and samples[0].init_latent is not None
    assert 1 <= samples[0].num_steps < 4
