"""Negative prompts on the worker's engine: requests admitted together encode their prompts and negative prompts
in one text-encoder call, share guided steps, and make the images each makes alone."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from worker.engine import Engine, GenerationRequest


def run_together(engine: Engine, jobs: list[GenerationRequest]) -> list[Any]:
    """Submit `jobs` while the engine thread is held on an exclusive call, so they are admitted in one round."""
    gate = threading.Event()
    blocker = threading.Thread(target=engine.run_exclusive, args=(None, lambda pipe: gate.wait(10)))
    blocker.start()
    handles = [engine.submit(job) for job in jobs]
    gate.set()
    blocker.join(10)
    return [h.result(timeout=30) for h in handles]


def test_negative_prompts_admitted_together_share_one_encoding_call_and_keep_their_images() -> None:
    from model import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh generator's zero-initialised outputs would ignore every condition
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    calls: list[list[str]] = []
    encode = pipe.text_encoder.encode

    def counting_encode(prompts: list[str]) -> Any:
        calls.append(list(prompts))
        return encode(prompts)

    pipe.text_encoder.encode = counting_encode
    common = {"steps": 3, "guidance_scale": 6.0}
    jobs = [
        GenerationRequest(prompt="red apple", n=2, seed=1, negative_prompt="green", **common),
        GenerationRequest(prompt="red apple", seed=1, **common),
        GenerationRequest(prompt="rocket", seed=3, negative_prompt="blurry", **common),
    ]
    engine = Engine({"t2i": pipe})
    try:
        together = run_together(engine, jobs)
        assert calls[0] == ["red apple", "red apple", "red apple", "rocket", "green", "blurry"]
        calls.clear()
        alone = [engine.run(job) for job in jobs]
        assert ["green"] in calls and ["blurry"] in calls  # alone, each encodes its own
    finally:
        engine.close()
    for batched, single in zip(together, alone, strict=True):
        for a, b in zip(batched.images, single.images, strict=True):
            assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    with_negative = np.asarray(together[0].images[0], dtype=np.int16)  # same prompt and seed as job 2
    assert np.abs(with_negative - np.asarray(together[1].images[0], dtype=np.int16)).max() > 0
