"""DINOv2 and SigLIP2 vision towers from a local Hugging Face model directory."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

# diffusers finds a pipeline component's save/load methods by looking up ModelMixin in the module that
# defines the component's class (model_index.json names this module), so it must be importable from here.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config

from model.encoders.frozen import (
    ExternalWeightsMixin,
    check_loading_info,
    default_device_is_meta,
    read_config_json,
    require_hf_directory,
    resolve_options,
)
from model.encoders.representation import IMAGENET_MEAN, IMAGENET_STD, RepresentationEncoder
from model.errors import InvalidInputError

# model_type in config.json -> (encoder kind, transformers config class, model class, input layout).
# Fixed-resolution SigLIP2 checkpoints (google/siglip2-*-patch16-256) are "siglip" models; NaFlex ones
# are "siglip2".
_VISION_MODELS: dict[str, tuple[str, str, str, str]] = {
    "dinov2": ("dinov2", "Dinov2Config", "Dinov2Model", "image"),
    "dinov2_with_registers": ("dinov2", "Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", "image"),
    "siglip": ("siglip2", "SiglipVisionConfig", "SiglipVisionModel", "image"),
    "siglip_vision_model": ("siglip2", "SiglipVisionConfig", "SiglipVisionModel", "image"),
    "siglip2": ("siglip2", "Siglip2VisionConfig", "Siglip2VisionModel", "naflex"),
    "siglip2_vision_model": ("siglip2", "Siglip2VisionConfig", "Siglip2VisionModel", "naflex"),
}

# Architectures of the paper's encoders, so that the model can be built on the meta device (parameter
# counts, shapes) where the directory is not mounted. A directory's own config.json always wins.
KNOWN_VISION_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2-giant": (
        "dinov2",
        {
            "hidden_size": 1536,
            "num_hidden_layers": 40,
            "num_attention_heads": 24,
            "mlp_ratio": 4,
            "use_swiglu_ffn": True,
            "patch_size": 14,
            "image_size": 518,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
        },
    ),
    "dinov2-with-registers-giant": (
        "dinov2_with_registers",
        {
            "hidden_size": 1536,
            "num_hidden_layers": 40,
            "num_attention_heads": 24,
            "mlp_ratio": 4,
            "use_swiglu_ffn": True,
            "patch_size": 14,
            "image_size": 518,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
            "num_register_tokens": 4,
        },
    ),
    "siglip2-giant-opt-patch16-256": (
        "siglip_vision_model",
        {
            "hidden_size": 1536,
            "intermediate_size": 6144,
            "num_hidden_layers": 40,
            "num_attention_heads": 16,
            "patch_size": 16,
            "image_size": 256,
        },
    ),
    "siglip2-giant-opt-patch16-384": (
        "siglip_vision_model",
        {
            "hidden_size": 1536,
            "intermediate_size": 6144,
            "num_hidden_layers": 40,
            "num_attention_heads": 16,
            "patch_size": 16,
            "image_size": 384,
        },
    ),
}

_EXAMPLE_REPO = {"dinov2": "facebook/dinov2-giant", "siglip2": "google/siglip2-giant-opt-patch16-256"}


def _expected_directory(kind: str) -> str:
    return f"a Hugging Face model directory such as {_EXAMPLE_REPO[kind]}"


def _check_kind(kind: str) -> None:
    if kind not in _EXAMPLE_REPO:
        raise InvalidInputError(
            f"HF vision encoder kind must be one of {', '.join(_EXAMPLE_REPO)}; got {kind!r}"
        )


def _backbone_config(
    kind: str, path: str | None, architecture: str | None, allow_architecture: bool
) -> tuple[Any, str, Path | None]:
    """(transformers config, model_type, directory or None) from the directory, else from `architecture`."""
    _check_kind(kind)
    if architecture is not None and architecture not in KNOWN_VISION_ARCHITECTURES:
        raise InvalidInputError(
            f"unknown architecture {architecture!r}; known: {', '.join(KNOWN_VISION_ARCHITECTURES)}"
        )
    directory_exists = path is not None and Path(path).is_dir()
    if directory_exists or not (allow_architecture and architecture is not None):
        directory = require_hf_directory(path, _expected_directory(kind))
        model_type = read_config_json(directory).get("model_type", "")
        config_overrides: dict[str, Any] = {}
    else:
        directory = None
        model_type, config_overrides = KNOWN_VISION_ARCHITECTURES[architecture]
    if model_type not in _VISION_MODELS or _VISION_MODELS[model_type][0] != kind:
        fitting = [name for name, entry in _VISION_MODELS.items() if entry[0] == kind]
        raise InvalidInputError(
            f"{directory or architecture} holds a {model_type or 'unknown'} model, but kind {kind!r} "
            f"needs one of the model types {', '.join(fitting)}"
        )
    config_class = getattr(transformers, _VISION_MODELS[model_type][1])
    if directory is not None:
        config = config_class.from_pretrained(str(directory), local_files_only=True)
    else:
        config = config_class(**config_overrides)
    if hasattr(config, "vision_use_head"):
        config.vision_use_head = False  # SigLIP's pooling head is not used: patch tokens only
    return config, model_type, directory


def _native_image_size(config: Any) -> int:
    if getattr(config, "image_size", None):
        return int(config.image_size)
    return math.isqrt(int(config.num_patches)) * int(config.patch_size)  # NaFlex configs give a patch budget


def _default_image_size(kind: str, config: Any) -> int:
    # DINOv2 checkpoints say 518 but the paper feeds 224 (16×16 patches of 14 px).
    return 224 if kind == "dinov2" else _native_image_size(config)


def _checked_geometry(kind: str, config: Any, image_size: int | None) -> tuple[int, int]:
    size = image_size or _default_image_size(kind, config)
    patch = int(config.patch_size)
    if size <= 0 or size % patch:
        raise InvalidInputError(
            f"{kind} image_size {size} must be a positive multiple of its patch size {patch}"
        )
    return size, size // patch


def naflex_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """B×3×H×W -> B×(h·w)×(patch·patch·3): patches in row-major order, each flattened rows, columns,
    channels last, as Siglip2VisionModel's image processor lays them out."""
    batch, channels, height, width = pixels.shape
    rows, columns = height // patch, width // patch
    patches = pixels.reshape(batch, channels, rows, patch, columns, patch).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch, rows * columns, patch * patch * channels)


class HFVisionEncoder(ExternalWeightsMixin, RepresentationEncoder):
    """A DINOv2 or SigLIP2 vision tower read from a local Hugging Face model directory (never the hub).

    Options: `kind` "dinov2" | "siglip2"; `path` the model directory (config.json + model.safetensors, e.g. a
    download of facebook/dinov2-giant, facebook/dinov2-with-registers-giant or
    google/siglip2-giant-opt-patch16-256; a full SigLIP checkpoint with its text tower is fine);
    `image_size` the encoder input (default 224 for DINOv2, the checkpoint's size for SigLIP2);
    `architecture` a name from KNOWN_VISION_ARCHITECTURES, used only where the directory is absent.

    DINOv2: bicubic resize, ImageNet mean/std, CLS and register tokens dropped. SigLIP2: bilinear resize,
    mean = std = 0.5, no CLS token to drop. Tokens are `last_hidden_state` (after the final LayerNorm).

    Saving stores only this config (the path), never the external weights; loading re-reads them.

    Without weights: `describe(config)` gives feature_dim / grid_size / image_size from the directory's
    config.json or from `architecture`, and constructing under `with torch.device("meta")` with a missing
    directory builds the `architecture` with meta tensors (for parameter counts and shape checks). Anywhere
    else a missing or incomplete directory raises WeightsNotFoundError.
    """

    @register_to_config
    def __init__(
        self,
        kind: str = "dinov2",
        path: str | None = None,
        image_size: int | None = None,
        architecture: str | None = None,
    ) -> None:
        super().__init__()
        on_meta = default_device_is_meta()
        config, model_type, directory = _backbone_config(kind, path, architecture, allow_architecture=on_meta)
        self._image_size, self._grid_size = _checked_geometry(kind, config, image_size)
        _, _, model_class_name, self._layout = _VISION_MODELS[model_type]
        self._patch_size = int(config.patch_size)
        self._prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0)) if kind == "dinov2" else 0
        self._interpolate_positions = self._image_size != _native_image_size(config)
        if kind == "dinov2":
            self.resize_mode = "bicubic"
            self._register_normalization(IMAGENET_MEAN, IMAGENET_STD)
        else:
            self.resize_mode = "bilinear"  # what the SigLIP image processors use
            self._register_normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

        model_class = getattr(transformers, model_class_name)
        if directory is None or on_meta:
            self.backbone = model_class(config)
        else:
            self.backbone, info = model_class.from_pretrained(
                str(directory),
                config=config,
                local_files_only=True,
                dtype=torch.float32,
                output_loading_info=True,
            )
            check_loading_info(info, directory, f"a {model_type} vision model")
        self._feature_dim = int(config.hidden_size)
        self._freeze()

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    @property
    def grid_size(self) -> int:
        return self._grid_size

    @property
    def image_size(self) -> int:
        return self._image_size

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, str(config.get("kind", "dinov2")))
        backbone, _, _ = _backbone_config(options["kind"], options["path"], options["architecture"], True)
        size, grid = _checked_geometry(options["kind"], backbone, options["image_size"])
        return {"feature_dim": int(backbone.hidden_size), "grid_size": grid, "image_size": size}

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._layout == "naflex":
            batch, grid = pixels.shape[0], self._grid_size
            patches = naflex_patches(pixels, self._patch_size)
            mask = torch.ones(batch, grid * grid, dtype=torch.long, device=pixels.device)
            shapes = torch.full((batch, 2), grid, dtype=torch.long, device=pixels.device)
            output = self.backbone(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        elif self.config.kind == "siglip2":
            output = self.backbone(pixel_values=pixels, interpolate_pos_encoding=self._interpolate_positions)
        else:
            output = self.backbone(pixel_values=pixels)  # DINOv2 always interpolates its position embeddings
        return output.last_hidden_state[:, self._prefix_tokens :]
