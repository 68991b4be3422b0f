"""LoRA adapters through peft: injected into the generator, for training and `FAEPipeline.load_adapter`.

On a pipeline, adapters are injected with peft under their adapter id and kept (up to `capacity`, least
recently used evicted first); at most one is active. Deactivating one leaves every adapted layer computing
exactly its base output, and evicting the last one unwraps the layers, so outputs are restored bit for bit
without reloading the base. (Save a pipeline only with no adapter cached: `unload_adapter(evict=True)`,
otherwise the generator's weights are saved under peft's wrapped names.)
"""

from __future__ import annotations

import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from ..errors import AdapterError
from ..fingerprint import module_fingerprint
from ..io import write_directory_atomically
from .format import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    CONFIG_NAME,
    TARGET_MODULES,
    WEIGHTS_NAME,
    AdapterFiles,
    check_adapter_destination,
    check_fits,
    check_scale,
    file_signature,
    read_adapter,
)
from .slots import detach_slots, has_adapter_slots

DEFAULT_CAPACITY = 8


def lora_config(
    rank: int, alpha: float, target_modules: list[str] | tuple[str, ...] = TARGET_MODULES
) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=0.0, bias="none"
    )


def inject(generator: nn.Module, config: LoraConfig, adapter_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about a second adapter in a model; several are the point
        inject_adapter_in_model(config, generator, adapter_name=adapter_id)


def lora_layers(module: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def adapter_state(generator: nn.Module, adapter_id: str) -> dict[str, torch.Tensor]:
    """The plain per-module A/B matrices of one injected adapter."""
    state = {}
    for name, layer in lora_layers(generator):
        if adapter_id in layer.lora_A:
            state[f"{name}.lora_A.weight"] = layer.lora_A[adapter_id].weight.detach()
            state[f"{name}.lora_B.weight"] = layer.lora_B[adapter_id].weight.detach()
    return state


def strip_lora(module: nn.Module) -> nn.Module:
    """Replace every LoRA-wrapped layer (peft's or adapter slots') by its base layer (in place); returns it."""
    detach_slots(module)
    for name, layer in lora_layers(module):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    return module


def save_adapter(
    out_dir: Path,
    generator: nn.Module,
    adapter_id: str,
    rank: int,
    alpha: float,
    base_fingerprint: str,
    metadata: dict[str, Any],
) -> Path:
    """Write the adapter directory atomically (weights in bfloat16: a few MB even for the paper's generator)."""
    state = {
        k: v.to(torch.bfloat16).contiguous().cpu() for k, v in adapter_state(generator, adapter_id).items()
    }
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    config = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "rank": rank,
        "alpha": alpha,
        "dtype": "bfloat16",
        "modules": modules,
        "base_model": {
            "fingerprint": base_fingerprint,
            "generator_class": type(generator).__name__,
            "condition_type": getattr(generator, "condition_type", None),
        },
        **metadata,
    }
    out_dir = check_adapter_destination(out_dir)

    def write(tmp: str) -> None:
        save_file(state, str(Path(tmp, WEIGHTS_NAME)), metadata={"format": ADAPTER_FORMAT})
        Path(tmp, CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))

    return write_directory_atomically(out_dir, write, overwrite=True)


class AdapterManager:
    """Adapters loaded into one generator: an LRU of up to `capacity`, at most one active."""

    def __init__(self, generator: nn.Module, capacity: int = DEFAULT_CAPACITY) -> None:
        self.generator = generator
        self.capacity = capacity
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter id -> content hash, oldest first
        self.active: str | None = None
        self._signatures: dict[str, tuple] = {}  # adapter id -> (path, size, mtime) of its files when read
        self._base_fingerprint: str | None = None
        self._lock = threading.RLock()

    @property
    def base_fingerprint(self) -> str:
        if self._base_fingerprint is None:
            self._base_fingerprint = module_fingerprint(self.generator)
        return self._base_fingerprint

    def load(self, path: Path | str, adapter_id: str | None = None, scale: float = 1.0) -> str:
        """Load (or reuse from the LRU) the adapter at `path` and make it the active one; returns its id."""
        scale = check_scale(scale)
        if has_adapter_slots(self.generator):
            raise AdapterError(
                "this generator serves adapters from fixed slots (model/adapters/slots.py): load them with "
                "AdapterSlots.load, not through peft"
            )
        with self._lock:
            signature = file_signature(path)
            if (
                adapter_id is not None
                and adapter_id in self.loaded
                and self._signatures.get(adapter_id) == signature
            ):
                self.activate(adapter_id, scale)  # the files are unchanged since they were read: no disk read
                return adapter_id
            files = read_adapter(path)
            adapter_id = adapter_id or f"adapter-{files.content_hash[:16]}"
            if self.loaded.get(adapter_id) != files.content_hash:
                check_fits(self.generator, files, self.base_fingerprint)
                if adapter_id in self.loaded:  # same id, new contents: replace
                    self.evict(adapter_id)
                while len(self.loaded) >= self.capacity:
                    self.evict(next(iter(self.loaded)))
                self._inject(adapter_id, files)
                self.loaded[adapter_id] = files.content_hash
            self._signatures[adapter_id] = signature
            self.loaded.move_to_end(adapter_id)
            self.activate(adapter_id, scale)
            return adapter_id

    def _inject(self, adapter_id: str, files: AdapterFiles) -> None:
        config = lora_config(
            files.config["rank"], files.config.get("alpha", files.config["rank"]), files.config["modules"]
        )
        config.init_lora_weights = False  # the weights come from the file
        inject(self.generator, config, adapter_id)
        result = set_peft_model_state_dict(self.generator, files.state, adapter_name=adapter_id)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            self._delete(adapter_id)
            if not self.loaded:
                strip_lora(self.generator)
            raise AdapterError(f"the adapter holds weights this generator cannot take: {unexpected[:3]}")
        for _, layer in lora_layers(self.generator):
            if adapter_id in layer.lora_A:
                base = layer.get_base_layer().weight
                layer.lora_A[adapter_id].to(device=base.device, dtype=base.dtype).requires_grad_(False)
                layer.lora_B[adapter_id].to(device=base.device, dtype=base.dtype).requires_grad_(False)

    def activate(self, adapter_id: str, scale: float = 1.0) -> None:
        scale = check_scale(scale)
        with self._lock:
            if adapter_id not in self.loaded:
                raise AdapterError(f"adapter {adapter_id!r} is not loaded")
            for _, layer in lora_layers(self.generator):
                layer.set_adapter([adapter_id] if adapter_id in layer.lora_A else [], inference_mode=True)
                layer.set_scale(adapter_id, scale)
            self.active = adapter_id
            self.loaded.move_to_end(adapter_id)

    def set_scale(self, scale: float, adapter_id: str | None = None) -> None:
        with self._lock:
            adapter_id = adapter_id or self.active
            if adapter_id is None or adapter_id not in self.loaded:
                raise AdapterError("no adapter is loaded to scale")
            scale = check_scale(scale)
            for _, layer in lora_layers(self.generator):
                layer.set_scale(adapter_id, scale)

    def deactivate(self, adapter_id: str | None = None) -> None:
        """Base outputs again (the adapter stays cached). With an id, only if that adapter is the active one."""
        with self._lock:
            if adapter_id is not None and adapter_id != self.active:
                return
            for _, layer in lora_layers(self.generator):
                layer.set_adapter([], inference_mode=True)
            self.active = None

    def evict(self, adapter_id: str) -> None:
        with self._lock:
            if adapter_id not in self.loaded:
                return
            if self.active == adapter_id:
                self.deactivate()
            self._delete(adapter_id)
            del self.loaded[adapter_id]
            self._signatures.pop(adapter_id, None)
            if not self.loaded:
                strip_lora(self.generator)

    def _delete(self, adapter_id: str) -> None:
        for _, layer in lora_layers(self.generator):
            if adapter_id in layer.lora_A:
                layer.delete_adapter(adapter_id)
                layer.set_adapter([], inference_mode=True)
        getattr(self.generator, "peft_config", {}).pop(adapter_id, None)


def adapter_manager(pipe: Any, capacity: int | None = None) -> AdapterManager:
    """The pipeline's adapter manager, created on first use (bound to its current generator)."""
    manager = pipe.__dict__.get("_adapter_manager")
    if manager is None or manager.generator is not pipe.generator:
        manager = AdapterManager(pipe.generator, capacity or DEFAULT_CAPACITY)
        pipe.__dict__["_adapter_manager"] = manager
    elif capacity is not None:
        manager.capacity = capacity
    return manager
