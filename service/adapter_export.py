"""An adapter in peft's format, as a zip (`GET /v1/adapters/{id}/download`), built without torch.

A stored adapter (`model/adapters/format.py`: `adapter.safetensors` with keys `M.lora_A.weight`, our
`adapter_config.json`) becomes what `PeftModel.from_pretrained` reads: `adapter_config.json` with
`peft_type: "LORA"`, `r`, `lora_alpha`, `target_modules`, and `adapter_model.safetensors` with peft's keys
(`base_model.model.M.lora_A.weight`). The tensors are not touched: a safetensors file is an 8-byte header
length, a JSON header naming each tensor's dtype, shape and byte range, then the bytes; only the header's names
change. Our config travels in the header's metadata (`fae_config`), so the pipeline reads the export back with
its base check intact.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Any

from core.contract import AdapterRecord
from core.storage import Storage

WEIGHTS_NAME = "adapter.safetensors"  # our stored format (model/adapters/format.py)
CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."
PEFT_METADATA_KEY = "fae_config"


class AdapterExportError(ValueError):
    """The stored adapter is not one this gateway can convert (corrupt or of an unknown format)."""


def peft_weights(raw: bytes, metadata: dict[str, str]) -> bytes:
    """A safetensors file with peft's tensor names and `metadata` added; the tensor bytes are unchanged."""
    if len(raw) < 8:
        raise AdapterExportError("the adapter's weights file is truncated")
    (length,) = struct.unpack("<Q", raw[:8])
    try:
        header: dict[str, Any] = json.loads(raw[8 : 8 + length])
    except ValueError as exc:
        raise AdapterExportError("the adapter's weights file has no readable header") from exc
    renamed: dict[str, Any] = {
        "__metadata__": {**header.pop("__metadata__", {}), **metadata},
        **{PEFT_KEY_PREFIX + name: tensor for name, tensor in header.items()},
    }
    encoded = json.dumps(renamed, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :]


def peft_config(config: dict[str, Any], base_model: str) -> dict[str, Any]:
    """peft's `LoraConfig` for our config: the same rank, alpha and exact module names (no dropout, no bias)."""
    if config.get("format") != "fae-lora" or not isinstance(config.get("rank"), int):
        raise AdapterExportError(f"the adapter has format {config.get('format')!r}, not 'fae-lora'")
    rank = config["rank"]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": config.get("alpha", rank),
        "target_modules": list(config.get("modules") or []),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def peft_zip(record: AdapterRecord, storage: Storage) -> bytes:
    """The adapter's peft directory as a zip (weights: a few MB)."""
    raw_config = storage.get_bytes(record.key + CONFIG_NAME)
    try:
        config = json.loads(raw_config)
    except ValueError as exc:
        raise AdapterExportError("the adapter's config is not valid JSON") from exc
    weights = peft_weights(
        storage.get_bytes(record.key + WEIGHTS_NAME), {PEFT_METADATA_KEY: raw_config.decode()}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(CONFIG_NAME, json.dumps(peft_config(config, record.model), indent=2))
        archive.writestr(PEFT_WEIGHTS_NAME, weights)
    return buffer.getvalue()
