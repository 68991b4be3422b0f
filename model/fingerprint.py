"""Content fingerprints of modules (weights + config) and of JSON-able keys.

Used to key the latent cache (a changed encoder or compressor invalidates it) and to record which base
generator a LoRA adapter was trained on. Weights are hashed after rounding to bfloat16, so the float32 copy of
a model on a CPU and its bfloat16 copy on a GPU have the same fingerprint; LoRA layers injected by peft are
ignored, so a generator carrying cached adapters keeps its base fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

FINGERPRINT_VERSION = 1


def config_identity(module: nn.Module) -> dict[str, Any]:
    """The module's class and its diffusers config (private keys such as `_name_or_path` dropped)."""
    config = getattr(module, "config", None)
    items = {}
    if config is not None and hasattr(config, "items"):
        items = {key: value for key, value in config.items() if not str(key).startswith("_")}
    return {"class": type(module).__name__, "config": items}


def canonical_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under their original names, without any peft LoRA tensors."""
    state = {}
    for name, tensor in module.state_dict().items():
        if ".lora_" in name or name.startswith("lora_"):
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def module_fingerprint(module: nn.Module) -> str:
    """sha256 hex of the module's class, config and weights (rounded to bfloat16)."""
    digest = hashlib.sha256()
    digest.update(f"fae-module-fingerprint-v{FINGERPRINT_VERSION}".encode())
    digest.update(json.dumps(config_identity(module), sort_keys=True, default=str).encode())
    for name, tensor in sorted(canonical_state(module).items()):
        digest.update(f"\0{name}:{tuple(tensor.shape)}:".encode())
        if tensor.is_floating_point():
            tensor = tensor.detach().to(torch.bfloat16)
        data = tensor.detach().contiguous().cpu().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def json_fingerprint(value: Any) -> str:
    """sha256 hex of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
