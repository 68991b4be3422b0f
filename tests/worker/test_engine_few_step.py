"""The worker engine on a few-step model refuses image-to-image (the pipeline's check, reached through the
engine), and a job with an image but no strength falls back to the contract's default strength."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import PIL.Image
import pytest

from core.contract import DEFAULT_STRENGTH, GenerateRequest
from model.errors import InvalidInputError
from worker.engine import Engine, GenerationRequest


@pytest.fixture(scope="module")
def few_step_engine() -> Iterator[Engine]:
    from model import FAEPipeline
    from model.scheduling import FlowMatchingScheduler

    pipe = FAEPipeline.from_preset("tiny", seed=0)
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    pipe.scheduler = FlowMatchingScheduler(**{**config, "supported_steps": [1, 2, 4]})
    engine = Engine({"turbo": pipe})
    try:
        yield engine
    finally:
        engine.close()


def _image(engine: Engine) -> Any:
    size = engine.pipeline("turbo").image_size
    return PIL.Image.new("RGB", (size, size), (30, 90, 200))


def test_the_engine_refuses_image_to_image_on_a_few_step_model(few_step_engine: Engine) -> None:
    request = GenerationRequest(class_label=1, steps=2, seed=0, image=_image(few_step_engine), strength=0.6)
    with pytest.raises(InvalidInputError, match=r"strength 0\.6"):
        few_step_engine.run(request)
    plain = GenerationRequest(class_label=1, steps=2, seed=0, image=_image(few_step_engine), strength=1.0)
    assert len(few_step_engine.run(plain).images) == 1  # strength 1: plain generation on its own grid


def test_an_image_without_strength_falls_back_to_the_contract_default() -> None:
    body = GenerateRequest(class_label=1, steps=2, image="inputs/acme/x.png")
    assert body.strength is None
    image = PIL.Image.new("RGB", (8, 8))
    assert GenerationRequest.from_api(body, image=image).strength == DEFAULT_STRENGTH
    assert GenerationRequest.from_api(GenerateRequest(class_label=1)).strength == 1.0
    given = GenerateRequest(class_label=1, image="inputs/acme/x.png", strength=0.3)
    assert GenerationRequest.from_api(given, image=image).strength == 0.3
