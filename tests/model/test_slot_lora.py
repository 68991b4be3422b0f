"""LoRA slots: adapters mixed per sample in one batch, equal to the peft path, swapped with no recompile."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from model import FAEPipeline
from model.adapters import (
    AdapterSlots,
    AdapterSlotsFull,
    adapter_slots,
    has_adapter_slots,
    inject,
    lora_config,
    read_adapter,
    save_adapter,
)
from model.batching import DenoisingBatcher, DenoisingJob
from model.errors import AdapterError, AdapterMismatchError, InvalidInputError
from model.fingerprint import module_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESETS = ("tiny", "tiny-t2i")


def perturbed_pipe(preset: str, seed: int = 1) -> FAEPipeline:
    """adaLN-Zero makes an untrained generator ignore its blocks; perturb it so adapters change outputs."""
    pipe = FAEPipeline.from_preset(preset, seed=0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


def make_adapter(pipe: FAEPipeline, out: Path, rank: int = 2, seed: int = 0, alpha: float = 4.0) -> Path:
    """An adapter file with random non-zero matrices, recorded against `pipe`'s generator."""
    generator = copy.deepcopy(pipe.generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject(generator, lora_config(rank, alpha), "made")
        with torch.no_grad():
            for name, p in generator.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.3)
    return save_adapter(out, generator, "made", rank, alpha, module_fingerprint(pipe.generator), {})


def request(pipe: FAEPipeline, seed: int = 3) -> dict[str, Any]:
    condition = {"class_labels": 2} if pipe.condition_type == "class" else {"prompt": "a red square"}
    return {**condition, "num_inference_steps": 5, "guidance_scale": 2.0, "seed": seed}


def generate(pipe: FAEPipeline, jobs: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Jobs (seed, adapter slot) denoised together in one batch; images per job."""
    batcher = DenoisingBatcher(pipe)
    for i, (seed, slot) in enumerate(jobs):
        batcher.add(DenoisingJob(i, pipe.prepare_samples(**request(pipe, seed), key=i, adapter_slot=slot)))
    results = {r.key: r.images for r in batcher.run_until_idle()}
    return [results[i] for i in range(len(jobs))]


def slot_buffers(slots: AdapterSlots) -> list[int]:
    tensors = [t for layer in slots.layers.values() for t in (layer.lora_A, layer.lora_B, layer.lora_scale)]
    return [t.data_ptr() for t in [*tensors, slots.slot_index]]


@pytest.mark.parametrize("preset", PRESETS)
def test_slots_give_the_peft_paths_images(preset: str, tmp_path: Path) -> None:
    pipe = perturbed_pipe(preset)
    path = make_adapter(pipe, tmp_path / "x", rank=3)
    peft_pipe, slotted = copy.deepcopy(pipe), pipe
    peft_pipe.load_adapter(path, adapter_id="x", scale=0.7)
    expected = peft_pipe(**request(peft_pipe), output_type="pt").images
    slots = AdapterSlots.attach(slotted.generator, num_slots=4, max_rank=8, max_batch=16)
    assert (
        module_fingerprint(slotted.generator)
        == slots.base_fingerprint
        == module_fingerprint(peft_pipe.generator)
    )
    slot = slots.load(path, "x", scale=0.7)
    (through_slots,) = generate(slotted, [(3, slot)])
    torch.testing.assert_close(through_slots, expected, atol=1e-5, rtol=0)
    peft_pipe.unload_adapter(evict=True)
    (no_adapter,) = generate(slotted, [(3, 0)])
    torch.testing.assert_close(
        no_adapter, peft_pipe(**request(peft_pipe), output_type="pt").images, atol=1e-5, rtol=0
    )
    assert not torch.allclose(no_adapter, through_slots, atol=1e-3)  # the adapter does change the images


@pytest.mark.parametrize("preset", PRESETS)
def test_a_batch_mixing_adapters_equals_each_sample_alone(preset: str, tmp_path: Path) -> None:
    pipe = perturbed_pipe(preset)
    paths = [make_adapter(pipe, tmp_path / name, rank=rank, seed=rank) for name, rank in (("x", 2), ("y", 4))]
    slots = AdapterSlots.attach(pipe.generator, num_slots=4, max_rank=4, max_batch=16)
    x, y = slots.load(paths[0], "x"), slots.load(paths[1], "y", scale=1.5)
    jobs = [(5, 0), (6, x), (7, y)]
    together = generate(pipe, jobs)
    alone = [generate(pipe, [job])[0] for job in jobs]
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # One adapter row: the batch routes through the slots, the plain row alone skips them; same images.
    for a, b in zip(alone[:2], generate(pipe, jobs[:2]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Each adapter acts on its own rows only: the same seed through another slot gives other images.
    assert not torch.allclose(generate(pipe, [(6, 0)])[0], together[1], atol=1e-3)


def recording(generator: torch.nn.Module, aten_ops: type, calls: list) -> Callable[..., torch.Tensor]:
    """The generator's forward, recording each call's keyword names and aten ops."""

    def forward(*args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        with aten_ops() as ops:
            out = generator(*args, **kwargs)
        calls.append((sorted(kwargs), ops.names))
        return out

    return forward


@pytest.mark.parametrize("preset", PRESETS)
def test_a_batch_without_adapters_runs_exactly_the_plain_generator(preset: str, aten_ops: type) -> None:
    """With slots attached (the worker's default) but no adapter in the batch, the generator is called without
    `adapter_slots` and runs the unslotted generator's aten ops, no gathers, for the same images."""
    slotted = perturbed_pipe(preset)
    plain = copy.deepcopy(slotted)
    AdapterSlots.attach(slotted.generator, num_slots=4, max_rank=4, max_batch=16)
    calls: dict[str, list[tuple[list[str], list[str]]]] = {"plain": [], "slotted": []}
    images = {}
    for name, pipe in (("plain", plain), ("slotted", slotted)):
        batcher = DenoisingBatcher(pipe, forward=recording(pipe.generator, aten_ops, calls[name]))
        batcher.add(DenoisingJob(0, pipe.prepare_samples(**request(pipe), num_images=2, key=0)))
        (result,) = batcher.run_until_idle()
        images[name] = result.images
    assert "adapter_slots" not in calls["slotted"][0][0]
    assert calls["slotted"] == calls["plain"]
    assert torch.equal(images["slotted"], images["plain"])


@pytest.mark.slow
def test_swapping_and_adding_adapters_never_recompiles(tmp_path: Path) -> None:
    from model.compiled import BucketedForward

    pipe = perturbed_pipe("tiny")
    paths = [make_adapter(pipe, tmp_path / name, rank=rank, seed=rank) for name, rank in (("x", 2), ("y", 3))]
    slots = AdapterSlots.attach(pipe.generator, num_slots=4, max_rank=4, max_batch=8)
    x = slots.load(paths[0], "x")
    fast = BucketedForward(pipe.generator, buckets=(4,), compile=True)
    latents, t = torch.randn(3, *pipe.latent_shape), torch.rand(3)
    labels = torch.tensor([1, 2, 3])
    addresses = slot_buffers(slots)
    counters = torch._dynamo.utils.counters
    with torch.no_grad():
        first = fast(latents, t, class_labels=labels, adapter_slots=torch.tensor([0, x, 0]))
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        y = slots.load(paths[1], "y", scale=0.5)  # a new adapter
        with torch._dynamo.config.patch(error_on_recompile=True):
            swapped = fast(latents, t, class_labels=labels, adapter_slots=torch.tensor([y, 0, x]))
        assert counters["stats"]["unique_graphs"] == graphs
        assert slot_buffers(slots) == addresses
        for out, chosen in ((first, [0, x, 0]), (swapped, [y, 0, x])):
            eager = pipe.generator(latents, t, labels, adapter_slots=torch.tensor(chosen))
            torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first[0], swapped[0], atol=1e-3)  # the compiled graph read the new slots


def test_lru_evicts_the_least_recently_used_slot_nobody_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = perturbed_pipe("tiny")
    paths = {name: make_adapter(pipe, tmp_path / name, seed=i) for i, name in enumerate("abcd")}
    slots = AdapterSlots.attach(pipe.generator, num_slots=4, max_rank=4, max_batch=8)  # 3 adapters
    addresses = slot_buffers(slots)
    held = {name: slots.load(paths[name], name) for name in "abc"}
    assert sorted(held.values()) == [1, 2, 3]
    with pytest.raises(AdapterSlotsFull, match="all 3 adapter slots are held"):
        slots.load(paths["d"], "d")
    for name in "abc":
        slots.release(held[name])
    reads: list[object] = []
    real_read = read_adapter
    monkeypatch.setattr(
        "model.adapters.slots.read_adapter", lambda path: reads.append(path) or real_read(path)
    )
    assert slots.load(paths["a"], "a") == held["a"] and not reads  # a hit: no disk read, now the most recent
    slots.release(held["a"])
    d = slots.load(paths["d"], "d")  # evicts b, the least recently used
    assert d == held["b"] and slots.slot_of("b") is None and slots.slot_of("a") == held["a"]
    assert len(reads) == 1 and slot_buffers(slots) == addresses
    # The evicted slot now computes d exactly as a fresh slot holding d would.
    fresh = perturbed_pipe("tiny")
    fresh_slots = AdapterSlots.attach(fresh.generator, num_slots=2, max_rank=4, max_batch=8)
    only_d = fresh_slots.load(paths["d"], "d")
    torch.testing.assert_close(
        generate(pipe, [(1, d)])[0], generate(fresh, [(1, only_d)])[0], atol=1e-6, rtol=0
    )
    with pytest.raises(AdapterError, match="not held"):
        slots.release(held["c"])  # released already


def test_same_adapter_at_another_scale_or_with_new_contents_gets_its_own_slot(tmp_path: Path) -> None:
    pipe = perturbed_pipe("tiny")
    base = copy.deepcopy(pipe)  # adapters are made on an unslotted copy (peft cannot wrap slotted layers)
    path = make_adapter(base, tmp_path / "a", seed=0)
    slots = AdapterSlots.attach(pipe.generator, num_slots=4, max_rank=4, max_batch=8)
    one = slots.load(path, "a", scale=1.0)
    half = slots.load(path, "a", scale=0.5)
    assert one != half and slots.slot_of("a", 0.5) == half
    make_adapter(base, tmp_path / "a", seed=9)  # retrained in place while `one` is still held
    renewed = slots.load(path, "a", scale=1.0)
    assert renewed not in (one, half) and slots.slot_of("a") == renewed and slots.users(one) == 1


def test_refuses_a_foreign_base_and_a_rank_above_max(tmp_path: Path) -> None:
    pipe = perturbed_pipe("tiny")
    foreign = make_adapter(perturbed_pipe("tiny", seed=7), tmp_path / "foreign")
    wide, fits = make_adapter(pipe, tmp_path / "wide", rank=4), make_adapter(pipe, tmp_path / "fits", rank=2)
    slots = AdapterSlots.attach(pipe.generator, num_slots=3, max_rank=2, max_batch=8)
    with pytest.raises(AdapterMismatchError, match="another base model"):
        slots.load(foreign, "foreign")
    with pytest.raises(AdapterError, match="rank 4, above the 2"):
        slots.load(wide, "wide")
    assert slots.slot_of("foreign") is None and slots.slot_of("wide") is None
    assert slots.load(fits, "fits") == 1  # nothing was taken
    with pytest.raises(AdapterError, match="already carries LoRA layers"):
        AdapterSlots.attach(pipe.generator)


def test_generators_without_slots_take_only_no_adapter() -> None:
    pipe = perturbed_pipe("tiny")
    latents, t, labels = torch.randn(2, *pipe.latent_shape), torch.rand(2), torch.tensor([1, 2])
    with torch.no_grad():
        base = pipe.generator(latents, t, labels)
        assert torch.equal(
            pipe.generator(latents, t, labels, adapter_slots=torch.zeros(2, dtype=torch.long)), base
        )
        with pytest.raises(InvalidInputError, match="no adapter slots attached"):
            pipe.generator(latents, t, labels, adapter_slots=torch.tensor([0, 1]))
    samples = pipe.prepare_samples(class_labels=1, num_inference_steps=2)
    assert "adapter_slots" not in samples[0].cond and not has_adapter_slots(pipe.generator)
    with pytest.raises(InvalidInputError, match="adapter_slot needs adapter slots"):
        pipe.prepare_samples(class_labels=1, num_inference_steps=2, adapter_slot=1)
    slots = AdapterSlots.attach(pipe.generator, num_slots=2, max_rank=2, max_batch=2)
    assert adapter_slots(pipe.generator) is slots
    sample = pipe.prepare_samples(class_labels=1, num_inference_steps=2, adapter_slot=1)[0]
    assert sample.adapter_slot == 1 and "adapter_slots" not in sample.cond  # the batcher adds it when used
    with torch.no_grad():
        torch.testing.assert_close(
            pipe.generator(latents, t, labels), base, atol=1e-6, rtol=0
        )  # slot 0: base
        four = (torch.cat([latents] * 2), torch.cat([t] * 2), torch.cat([labels] * 2))
        with pytest.raises(InvalidInputError, match="exceeds the 2 rows"):
            pipe.generator(*four, adapter_slots=torch.zeros(4, dtype=torch.long))
        pipe.generator(*four)  # without adapter rows the slot index is not used: any batch size


def test_a_fine_tune_from_a_slotted_pipeline_trains_a_clean_copy(brand_dir: Path, tmp_path: Path) -> None:
    """The worker fine-tunes from the pipeline it serves: the copy it trains drops the slots, the served
    generator keeps them, and the new adapter loads into a slot (same base fingerprint)."""
    from model.training.lora import run_finetune

    pipe = perturbed_pipe("tiny")
    slots = AdapterSlots.attach(pipe.generator, num_slots=3, max_rank=4, max_batch=8)
    addresses = slot_buffers(slots)
    report = run_finetune(
        pipeline=pipe, images_dir=brand_dir, out_dir=tmp_path / "brand", steps=2, rank=2, batch_size=4
    )
    assert adapter_slots(pipe.generator) is slots and slot_buffers(slots) == addresses
    assert slots.load(report["adapter_dir"], "brand") == 1
    with pytest.raises(AdapterError, match="serves adapters from fixed slots"):
        pipe.load_adapter(report["adapter_dir"])
