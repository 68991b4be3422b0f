"""The FAE model stack: frozen encoders, the feature auto-encoder, generators, flow matching and the pipeline.

Imports are lazy so that `import model` stays cheap (the CLI imports it to register commands) and so that
diffusers can resolve the classes named in a saved pipeline's `model_index.json` (library "model").
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FAEPipeline": "pipeline",
    "FAEPipelineOutput": "pipeline",
    "FAEEncoder": "fae",
    "FeatureDecoder": "fae",
    "PixelDecoder": "pixel_decoder",
    "LightningDiT": "lightning_dit",
    "MMDiT": "mmdit",
    "FlowMatchingScheduler": "scheduling",
    "GuidanceSchedule": "guidance",
    "PRESETS": "presets",
    "InvalidInputError": "errors",
    "WeightsNotFoundError": "errors",
    "GenerationCanceled": "errors",
}
_ENCODER_EXPORTS = ("TinyViTEncoder", "HFVisionEncoder", "EfficientNetLite0Encoder", "RepresentationEncoder")
_TEXT_EXPORTS = ("HashTextEncoder", "MiniLMTextEncoder", "T5TextEncoder", "TextEncoder")

__all__ = [*_EXPORTS, *_ENCODER_EXPORTS, *_TEXT_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    elif name in _ENCODER_EXPORTS:
        module = importlib.import_module(".encoders", __name__)
    elif name in _TEXT_EXPORTS:
        module = importlib.import_module(".text_encoders", __name__)
    else:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(module, name)
