"""The LoRA adapter format: reading an adapter directory and checking it fits a generator (no peft, no slots).

An adapter is a directory, written atomically by the fine-tune:
- `adapter.safetensors`: per adapted module `M`, `M.lora_A.weight` (rank × in) and `M.lora_B.weight`
  (out × rank); the module's output becomes W·x + scale · (alpha / rank) · B·A·x. Plain matrices, so that a
  loader other than peft (the fixed-rank slots of `slots.py`, swapped in place) can load them.
- `adapter_config.json`: format, rank, alpha, module names, the base generator's fingerprint (weights +
  config) and how it was trained (trigger phrase, class label mode, steps...).

`read_adapter` also reads peft's own format (what `GET /v1/adapters/{id}/download` hands out and
`PeftModel.save_pretrained` writes): `adapter_config.json` with `peft_type: "LORA"`, `r`, `lora_alpha`,
`target_modules`, and `adapter_model.safetensors` with keys `base_model.model.M.lora_A.weight`. An export keeps
our config in the safetensors metadata (`fae_config`), so its base check is as strict as ours; a peft adapter
from elsewhere has no base fingerprint and is checked by its matrix shapes only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ..errors import AdapterError, AdapterMismatchError

ADAPTER_FORMAT = "fae-lora"
ADAPTER_FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_KEY_PREFIX = "base_model.model."
PEFT_METADATA_KEY = "fae_config"  # our adapter_config.json, kept in an export's safetensors metadata
# The generator's attention and MLP projections (LightningDiT and both MMDiT streams).
TARGET_MODULES = ("qkv", "proj", "w12", "w3")
MAX_ABS_SCALE = 10.0


def check_adapter_destination(out_dir: Path | str) -> Path:
    """An adapter may replace an empty directory or an older adapter, nothing else."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / CONFIG_NAME).is_file())
    ):
        raise AdapterError(f"{out_dir} exists and is not an adapter directory: choose another output")
    return out_dir


@dataclass
class AdapterFiles:
    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    content_hash: str


def read_adapter(path: Path | str) -> AdapterFiles:
    """An adapter directory in our format or peft's (see the module's docstring)."""
    path = Path(path)
    if (path / PEFT_WEIGHTS_NAME).is_file() and not (path / WEIGHTS_NAME).is_file():
        return read_peft_adapter(path)
    weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
    if not path.is_dir() or not weights.is_file() or not config_path.is_file():
        raise AdapterError(
            f"{path} is not an adapter directory: expected {CONFIG_NAME} and {WEIGHTS_NAME} (from `fae finetune`)"
        )
    raw_config, raw_weights = config_path.read_bytes(), weights.read_bytes()
    try:
        config = json.loads(raw_config)
    except ValueError as exc:
        raise AdapterError(f"{config_path} is not valid JSON ({exc})") from exc
    if config.get("format") != ADAPTER_FORMAT or config.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise AdapterError(
            f"{path} holds format {config.get('format')!r} v{config.get('format_version')!r}; "
            f"this version reads {ADAPTER_FORMAT!r} v{ADAPTER_FORMAT_VERSION}"
        )
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise AdapterError(f"{weights} is not a readable safetensors file ({exc})") from exc
    digest = hashlib.sha256(raw_config + b"\0" + raw_weights).hexdigest()
    return AdapterFiles(path=path, config=config, state=state, content_hash=digest)


def read_peft_adapter(path: Path) -> AdapterFiles:
    """A peft LoRA directory as our format: prefix-free keys, and our config (from an export's metadata, else
    built from peft's: rank, alpha, the adapted modules, no base fingerprint)."""
    weights, config_path = path / PEFT_WEIGHTS_NAME, path / CONFIG_NAME
    raw_config, raw_weights = config_path.read_bytes() if config_path.is_file() else b"", weights.read_bytes()
    try:
        peft_config = json.loads(raw_config)
    except ValueError as exc:
        raise AdapterError(f"{config_path} is missing or not valid JSON ({exc})") from exc
    if not isinstance(peft_config, dict) or peft_config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} is not a peft LoRA adapter (peft_type {peft_config.get('peft_type')!r})")
    if peft_config.get("use_dora") or peft_config.get("use_rslora") or peft_config.get("rank_pattern"):
        raise AdapterError(f"{path} uses DoRA, rsLoRA or per-module ranks, which FAE adapters do not support")
    try:
        with safe_open(str(weights), "pt") as handle:
            metadata = handle.metadata() or {}
        state = {k.removeprefix(PEFT_KEY_PREFIX): v for k, v in load_file(str(weights)).items()}
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise AdapterError(f"{weights} is not a readable safetensors file ({exc})") from exc
    if PEFT_METADATA_KEY in metadata:
        config = json.loads(metadata[PEFT_METADATA_KEY])
    else:
        rank = peft_config.get("r")
        config = {
            "format": "peft",
            "rank": rank,
            "alpha": peft_config.get("lora_alpha", rank),
            "modules": sorted({k.rsplit(".lora_", 1)[0] for k in state}),
            "base_model": {},
        }
    digest = hashlib.sha256(raw_config + b"\0" + raw_weights).hexdigest()
    return AdapterFiles(path=path, config=config, state=state, content_hash=digest)


def check_fits(generator: nn.Module, files: AdapterFiles, base_fingerprint: str) -> None:
    """The adapter was trained on this base (where it records one) and its matrices fit the layers it names
    (wrapped or not)."""
    base = files.config.get("base_model", {})
    if base.get("fingerprint", base_fingerprint) != base_fingerprint:
        raise AdapterMismatchError(
            f"the adapter in {files.path} was trained on another base model "
            f"(its base {str(base.get('fingerprint'))[:12]}…, a {base.get('generator_class')}; this model "
            f"{base_fingerprint[:12]}…, a {type(generator).__name__}): load it onto the model it was fine-tuned from"
        )
    rank = files.config.get("rank")
    modules = files.config.get("modules") or []
    if not isinstance(rank, int) or rank < 1 or not modules:
        raise AdapterError(f"{files.path}/{CONFIG_NAME} has no valid rank or module list")
    for module_name in modules:
        try:
            target = generator.get_submodule(module_name)
        except AttributeError as exc:
            raise AdapterError(f"the adapter adapts {module_name!r}, which this generator lacks") from exc
        # peft's wrappers hide the base layer; slot wrappers expose its in/out features themselves
        base = target.get_base_layer() if hasattr(target, "get_base_layer") else target
        a, b = (
            files.state.get(f"{module_name}.lora_A.weight"),
            files.state.get(f"{module_name}.lora_B.weight"),
        )
        if (
            a is None
            or b is None
            or tuple(a.shape) != (rank, base.in_features)
            or tuple(b.shape)
            != (
                base.out_features,
                rank,
            )
        ):
            raise AdapterError(
                f"the adapter's matrices for {module_name!r} are missing or do not fit the layer"
            )


def file_signature(path: Path | str) -> tuple:
    """Where the adapter's files are, their sizes and modification times (None where unreadable)."""
    path = Path(path).resolve()
    signature: list[object] = [str(path)]
    for name in (CONFIG_NAME, WEIGHTS_NAME, PEFT_WEIGHTS_NAME):
        try:
            info = (path / name).stat()
            signature.append((info.st_size, info.st_mtime_ns))
        except OSError:
            signature.append(None)
    return tuple(signature)


def check_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise AdapterError(f"adapter scale must be a finite number, got {scale!r}")
    if abs(scale) > MAX_ABS_SCALE:
        raise AdapterError(f"adapter scale must be between -{MAX_ABS_SCALE} and {MAX_ABS_SCALE}, got {scale}")
    return float(scale)
