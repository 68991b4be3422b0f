"""What every frozen component (image and text encoders) shares: frozen-ness, weights kept outside the
pipeline folder, Hugging Face directory checks and option resolution for the factories."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import torch
from diffusers import ConfigMixin, ModelMixin

from model.errors import InvalidInputError, WeightsNotFoundError

# Any one of these next to config.json makes a Hugging Face model directory loadable.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def default_device_is_meta() -> bool:
    """True inside `with torch.device("meta")`: the architecture is wanted, not the weights."""
    return torch.empty(0).device.type == "meta"


class FrozenComponent(ModelMixin, ConfigMixin):
    """A pretrained part that is never trained: parameters need no grad and it stays in eval mode even when
    a parent module calls `.train()`."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Self:
        # Frozen encoders keep eval behaviour (dropout off, BatchNorm running stats) whatever the parent does.
        return super().train(False)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Self:
        model = super().from_pretrained(*args, **kwargs)
        model._freeze()  # loading can replace Parameter objects
        return model


class ExternalWeightsMixin:
    """For components whose weights live outside the pipeline folder (a mounted model directory or an
    installed package): `save_pretrained` writes only config.json, which says where the weights are, and
    `from_pretrained` rebuilds the component from that config, re-reading the weights from there.

    Put it before the component base class so these two methods win."""

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], is_main_process: bool = True, **_: Any
    ) -> None:
        if os.path.isfile(save_directory):
            raise InvalidInputError(f"{save_directory} is a file; save_pretrained needs a directory")
        os.makedirs(save_directory, exist_ok=True)
        if is_main_process:
            self.save_config(save_directory)  # type: ignore[attr-defined]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        **_: Any,
    ) -> Self:
        folder = Path(pretrained_model_name_or_path) / (subfolder or "")
        if not (folder / "config.json").is_file():
            raise WeightsNotFoundError(
                f"{folder} has no config.json: expected a folder written by {cls.__name__}.save_pretrained"
            )
        config = cls.load_config(str(folder))  # type: ignore[attr-defined]
        model = cls.from_config(config)  # type: ignore[attr-defined]
        dtype = dtype or torch_dtype  # diffusers passes either name, depending on the component's kind
        if dtype is not None:
            torch.nn.Module.to(
                model, dtype=dtype
            )  # ModelMixin.to warns about fp32 modules these have none of
        return model


def require_hf_directory(path: str | os.PathLike[str] | None, what: str) -> Path:
    """Check that `path` is a Hugging Face model directory (config.json + weights); `what` says which model
    belongs there, e.g. "a Hugging Face model directory such as facebook/dinov2-giant"."""
    expected = f"expected {what} with config.json and model.safetensors"
    if path is None:
        raise WeightsNotFoundError(f"no model directory configured (path is None): {expected}")
    directory = Path(path)
    if not directory.is_dir():
        raise WeightsNotFoundError(f"model directory {directory} does not exist: {expected}")
    if not (directory / "config.json").is_file():
        raise WeightsNotFoundError(f"{directory} has no config.json: {expected}")
    if not any((directory / name).is_file() for name in HF_WEIGHT_FILES):
        raise WeightsNotFoundError(
            f"{directory} has no weights (none of {', '.join(HF_WEIGHT_FILES)}): {expected}"
        )
    return directory


def read_config_json(directory: Path) -> dict[str, Any]:
    with open(directory / "config.json", encoding="utf-8") as handle:
        return json.load(handle)


def check_loading_info(info: dict[str, Any], directory: Path, what: str) -> None:
    """transformers fills weights missing from a checkpoint with random values and only warns: refuse."""
    missing = list(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise WeightsNotFoundError(
            f"the weights in {directory} do not fit {what}: {len(missing)} tensors missing ({shown}...)"
        )


def resolve_options(cls: type, options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """`options` merged over the defaults of `cls.__init__`; unknown or missing keys: InvalidInputError."""
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise InvalidInputError(
            f"unknown option(s) {', '.join(unknown)} for kind {kind!r}; "
            f"expected some of {', '.join(parameters)}"
        )
    resolved = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    resolved.update(options)
    missing = sorted(set(parameters) - set(resolved))
    if missing:
        raise InvalidInputError(f"option(s) {', '.join(missing)} are required for kind {kind!r}")
    return resolved
