"""Limits duplicated on purpose: the contract (core/) and the model stack (model/, which imports nothing of ours)
check the same numbers; each pair must stay equal, or the gateway would admit what the worker refuses."""

from __future__ import annotations

import pytest

import core.contract as contract
import model.commands
import model.guidance
import model.pipeline
import model.scheduling
import model.training.lora
from core.contract import FinetuneParams, GenerateRequest

PAIRS = [
    ("MAX_STEPS", model.scheduling.MAX_STEPS),
    ("MAX_SEED", model.pipeline.MAX_SEED),
    ("MAX_GUIDANCE_INTERVALS", model.guidance.MAX_GUIDANCE_INTERVALS),
    ("FINETUNE_MAX_STEPS", model.training.lora.FINETUNE_MAX_STEPS),
    ("FINETUNE_MAX_RANK", model.training.lora.FINETUNE_MAX_RANK),
    ("FINETUNE_MIN_IMAGES", model.training.lora.FINETUNE_MIN_IMAGES),
    ("FINETUNE_MAX_IMAGES", model.training.lora.FINETUNE_MAX_IMAGES),
    ("DEFAULT_STRENGTH", model.commands.DEFAULT_STRENGTH),
]


@pytest.mark.parametrize(("name", "model_value"), PAIRS, ids=[name for name, _ in PAIRS])
def test_contract_and_model_limits_are_equal(name: str, model_value: int) -> None:
    assert getattr(contract, name) == model_value


def test_the_contract_enforces_its_limits() -> None:
    GenerateRequest(class_label=1, steps=contract.MAX_STEPS, seed=contract.MAX_SEED)
    with pytest.raises(ValueError):
        GenerateRequest(class_label=1, steps=contract.MAX_STEPS + 1)
    FinetuneParams(steps=contract.FINETUNE_MAX_STEPS, rank=contract.FINETUNE_MAX_RANK)
    with pytest.raises(ValueError):
        FinetuneParams(rank=contract.FINETUNE_MAX_RANK + 1)


def test_model_marks_its_copies() -> None:
    import inspect

    for module in (model.scheduling, model.pipeline, model.training.lora, model.guidance):
        assert "Kept equal to core.contract." in inspect.getsource(module)
