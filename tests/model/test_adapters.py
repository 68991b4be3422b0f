"""LoRA adapters on a running pipeline: format, load/unload (exact restore), scale, LRU, base checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from model import FAEPipeline
from model.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterManager,
    adapter_manager,
    inject,
    lora_config,
    save_adapter,
)
from model.errors import AdapterError, AdapterMismatchError, InvalidInputError
from model.fingerprint import module_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perturbed(pipe: FAEPipeline, seed: int) -> FAEPipeline:
    """adaLN-Zero makes an untrained generator ignore its blocks; perturb it so adapters change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


def make_adapter(pipe: FAEPipeline, out: Path, rank: int = 2, seed: int = 0, strength: float = 0.3) -> Path:
    """An adapter with random non-zero matrices, recorded against `pipe`'s generator."""
    generator = copy.deepcopy(pipe.generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject(generator, lora_config(rank, float(rank)), "made")
        with torch.no_grad():
            for name, p in generator.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, strength)
    return save_adapter(
        out, generator, "made", rank, float(rank), module_fingerprint(pipe.generator), {"note": seed}
    )


@pytest.fixture
def pipe() -> FAEPipeline:
    return perturbed(FAEPipeline.from_preset("tiny", seed=0), seed=1)


def generate(pipe: FAEPipeline) -> torch.Tensor:
    return pipe(
        class_labels=[1, 2], num_inference_steps=6, guidance_scale=2.0, seed=3, output_type="pt"
    ).images


def test_the_format_is_plain_lora_matrices_and_a_config(pipe: FAEPipeline, tmp_path: Path) -> None:
    path = make_adapter(pipe, tmp_path / "a", rank=3)
    config = json.loads((path / CONFIG_NAME).read_text())
    weights = load_file(str(path / WEIGHTS_NAME))
    assert (config["format"], config["rank"], config["alpha"]) == ("fae-lora", 3, 3.0)
    assert config["base_model"]["fingerprint"] == module_fingerprint(pipe.generator)
    for module in config["modules"]:
        layer = pipe.generator.get_submodule(module)
        assert weights[f"{module}.lora_A.weight"].shape == (3, layer.in_features)
        assert weights[f"{module}.lora_B.weight"].shape == (layer.out_features, 3)
    suffixes = {m.rsplit(".", 1)[-1] for m in config["modules"]}
    assert suffixes == {"qkv", "proj", "w12", "w3"}  # attention and MLP projections, nothing else
    assert len(weights) == 2 * len(config["modules"])


def test_load_changes_outputs_and_unload_restores_them_exactly(pipe: FAEPipeline, tmp_path: Path) -> None:
    base = generate(pipe)
    adapter_id = pipe.load_adapter(make_adapter(pipe, tmp_path / "a"), adapter_id="brand", scale=1.0)
    assert adapter_id == "brand"
    adapted = generate(pipe)
    assert not torch.allclose(adapted, base, atol=1e-3)
    pipe.set_adapter_scale(0.5)
    half = generate(pipe)
    assert not torch.equal(half, adapted) and not torch.equal(half, base)
    pipe.set_adapter_scale(0.0)
    assert torch.equal(generate(pipe), base)
    pipe.unload_adapter("brand")
    assert torch.equal(generate(pipe), base)
    pipe.load_adapter(tmp_path / "a", adapter_id="brand")  # cached: back at scale 1
    assert torch.equal(generate(pipe), adapted)
    pipe.unload_adapter(evict=True)
    assert torch.equal(generate(pipe), base)
    assert not any(isinstance(m, LoraLayer) for m in pipe.generator.modules())  # layers unwrapped


def test_the_lru_keeps_recent_adapters_and_evicts_the_oldest(
    pipe: FAEPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = adapter_manager(pipe, capacity=2)
    paths = [make_adapter(pipe, tmp_path / f"a{i}", seed=i) for i in range(3)]
    injected: list[str] = []
    real_inject = AdapterManager._inject

    def counting(self: AdapterManager, adapter_id: str, files: object) -> None:
        injected.append(adapter_id)
        real_inject(self, adapter_id, files)

    monkeypatch.setattr(AdapterManager, "_inject", counting)
    outputs = {}
    for i, path in enumerate(paths[:2]):
        pipe.load_adapter(path, adapter_id=f"a{i}")
        outputs[i] = generate(pipe)
    reads = []
    monkeypatch.setattr("model.adapters.peft_cache.read_adapter", lambda path: reads.append(path))
    # a hit: no disk read, no injection, and a0 becomes the most recent
    pipe.load_adapter(paths[0], adapter_id="a0")
    assert reads == []
    monkeypatch.undo()
    monkeypatch.setattr(AdapterManager, "_inject", counting)
    assert injected == ["a0", "a1"] and torch.equal(generate(pipe), outputs[0])
    pipe.load_adapter(paths[2], adapter_id="a2")  # over capacity: a1, the least recently used, goes
    assert list(manager.loaded) == ["a0", "a2"]
    pipe.load_adapter(paths[1], adapter_id="a1")
    assert injected == ["a0", "a1", "a2", "a1"] and torch.equal(generate(pipe), outputs[1])
    # the same id with new contents is reloaded, not served stale
    make_adapter(pipe, tmp_path / "a1b", seed=9)
    pipe.load_adapter(tmp_path / "a1b", adapter_id="a1")
    assert injected[-1] == "a1" and not torch.equal(generate(pipe), outputs[1])


def test_an_adapter_for_another_base_is_refused(pipe: FAEPipeline, tmp_path: Path) -> None:
    other = perturbed(FAEPipeline.from_preset("tiny", seed=0), seed=2)
    path = make_adapter(other, tmp_path / "other")
    base = generate(pipe)
    with pytest.raises(AdapterMismatchError, match="trained on another base model") as info:
        pipe.load_adapter(path)
    assert isinstance(info.value, InvalidInputError)
    assert torch.equal(generate(pipe), base)  # nothing was injected


def test_bad_adapter_directories_are_clear_errors(pipe: FAEPipeline, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="not an adapter directory"):
        pipe.load_adapter(tmp_path / "missing")
    path = make_adapter(pipe, tmp_path / "a")
    (path / WEIGHTS_NAME).write_bytes((path / WEIGHTS_NAME).read_bytes()[:100])
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        pipe.load_adapter(path)
    path = make_adapter(pipe, tmp_path / "b")
    config = json.loads((path / CONFIG_NAME).read_text())
    (path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(AdapterError, match="v99"):
        pipe.load_adapter(path)
    path = make_adapter(pipe, tmp_path / "c")
    with pytest.raises(AdapterError, match="scale"):
        pipe.load_adapter(path, scale=float("nan"))


def test_the_base_fingerprint_ignores_dtype_and_cached_adapters(pipe: FAEPipeline, tmp_path: Path) -> None:
    fingerprint = module_fingerprint(pipe.generator)
    assert module_fingerprint(copy.deepcopy(pipe.generator).to(torch.bfloat16)) == fingerprint
    pipe.load_adapter(make_adapter(pipe, tmp_path / "a"))
    assert module_fingerprint(pipe.generator) == fingerprint
    changed = copy.deepcopy(pipe.generator)
    with torch.no_grad():
        changed.blocks[0].attn.qkv.base_layer.weight[0, 0] += 0.5
    assert module_fingerprint(changed) != fingerprint


def test_text_conditional_adapters_cover_both_mmdit_streams(tmp_path: Path) -> None:
    pipe = perturbed(FAEPipeline.from_preset("tiny-t2i", seed=0), seed=1)
    path = make_adapter(pipe, tmp_path / "t2i")
    modules = json.loads((path / CONFIG_NAME).read_text())["modules"]
    assert any(".latent." in m for m in modules) and any(".context." in m for m in modules)
    kwargs = {"prompt": "a red square", "num_inference_steps": 5, "seed": 0, "output_type": "pt"}
    base = pipe(**kwargs).images
    pipe.load_adapter(path)
    assert not torch.allclose(pipe(**kwargs).images, base, atol=1e-3)
    pipe.unload_adapter()
    assert torch.equal(pipe(**kwargs).images, base)
