"""Frozen representation encoders: images in [0, 1] -> patch tokens B×N×D."""

from model.encoders.efficientnet import EFFICIENTNET_LITE0_TAPS, EfficientNetLite0Encoder
from model.encoders.factory import (
    REPRESENTATION_ENCODER_KINDS,
    describe_representation_encoder,
    make_representation_encoder,
)
from model.encoders.hf_vision import KNOWN_VISION_ARCHITECTURES, HFVisionEncoder
from model.encoders.representation import RepresentationEncoder, validate_images
from model.encoders.tiny_vit import TinyViTEncoder

__all__ = [
    "EFFICIENTNET_LITE0_TAPS",
    "KNOWN_VISION_ARCHITECTURES",
    "REPRESENTATION_ENCODER_KINDS",
    "EfficientNetLite0Encoder",
    "HFVisionEncoder",
    "RepresentationEncoder",
    "TinyViTEncoder",
    "describe_representation_encoder",
    "make_representation_encoder",
    "validate_images",
]
