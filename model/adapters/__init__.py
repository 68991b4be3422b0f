"""LoRA adapters for the generator: the file format (`format`), peft injection with an LRU (`peft_cache`) and
fixed per-sample slots for serving (`slots`).

Exports are lazy, so that the generators can import `route_adapter_slots` without importing peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ADAPTER_FORMAT": "format",
    "ADAPTER_FORMAT_VERSION": "format",
    "CONFIG_NAME": "format",
    "MAX_ABS_SCALE": "format",
    "TARGET_MODULES": "format",
    "WEIGHTS_NAME": "format",
    "AdapterFiles": "format",
    "check_adapter_destination": "format",
    "check_fits": "format",
    "check_scale": "format",
    "file_signature": "format",
    "read_adapter": "format",
    "DEFAULT_CAPACITY": "peft_cache",
    "AdapterManager": "peft_cache",
    "adapter_manager": "peft_cache",
    "adapter_state": "peft_cache",
    "inject": "peft_cache",
    "lora_config": "peft_cache",
    "lora_layers": "peft_cache",
    "save_adapter": "peft_cache",
    "strip_lora": "peft_cache",
    "NO_ADAPTER": "slots",
    "SLOT_INDEX": "slots",
    "AdapterSlots": "slots",
    "AdapterSlotsFull": "slots",
    "SlotLoRALinear": "slots",
    "adapter_slots": "slots",
    "detach_slots": "slots",
    "has_adapter_slots": "slots",
    "route_adapter_slots": "slots",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
