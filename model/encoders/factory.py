"""Build a representation encoder from a preset's config dict, by `kind`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model.encoders.efficientnet import EfficientNetLite0Encoder
from model.encoders.frozen import resolve_options
from model.encoders.hf_vision import HFVisionEncoder
from model.encoders.representation import RepresentationEncoder
from model.encoders.tiny_vit import TinyViTEncoder
from model.errors import InvalidInputError

REPRESENTATION_ENCODER_KINDS: dict[str, type[RepresentationEncoder]] = {
    "tiny-vit": TinyViTEncoder,
    "dinov2": HFVisionEncoder,
    "siglip2": HFVisionEncoder,
    "efficientnet-lite0": EfficientNetLite0Encoder,
}


def _class_and_options(config: Mapping[str, Any]) -> tuple[type[RepresentationEncoder], dict[str, Any]]:
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in REPRESENTATION_ENCODER_KINDS:
        raise InvalidInputError(
            f"representation encoder kind must be one of {', '.join(REPRESENTATION_ENCODER_KINDS)}; "
            f"got {kind!r}"
        )
    encoder_class = REPRESENTATION_ENCODER_KINDS[kind]
    if encoder_class is HFVisionEncoder:
        options["kind"] = kind  # the HF wrapper serves two kinds
    return encoder_class, resolve_options(encoder_class, options, kind)


def make_representation_encoder(config: Mapping[str, Any]) -> RepresentationEncoder:
    """E.g. {"kind": "dinov2", "path": "/models/dinov2-giant", "architecture": "dinov2-giant"}."""
    encoder_class, options = _class_and_options(config)
    return encoder_class(**options)


def describe_representation_encoder(config: Mapping[str, Any]) -> dict[str, int]:
    """feature_dim, grid_size and image_size of the encoder `config` describes, without loading weights."""
    encoder_class, options = _class_and_options(config)
    return encoder_class.describe(options)
