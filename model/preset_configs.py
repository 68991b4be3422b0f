"""The presets' configurations as plain data (no torch): the CLI lists them without loading the model stack.

See model/presets.py for what each preset is and how it is built.
"""

from __future__ import annotations

from typing import Any

# The paper's FAE (DINOv2-g/14 features, 16×16×32 latent, 6-layer feature decoder, ViT-L pixel decoder), shared
# by both paper presets; each preset gets its own deep copy (model/presets.py: preset_config).
_PAPER_FAE: dict[str, Any] = {
    "encoder": {"kind": "dinov2", "path": None, "image_size": 224, "feature_dim": 1536, "grid_size": 16},
    # Shapes chosen to give the paper's parameter counts (README: "Presets"); fixed position tables are
    # frozen parameters, as in LightningDiT and RAE.
    "compressor": {"num_heads": 24, "head_dim": 256, "latent_channels": 32, "head_input": "attention"},
    "feature_decoder": {"depth": 6, "num_heads": 24, "mlp_hidden": 4096, "position_table": True},
    "pixel_decoder": {
        "patch_size": 16,
        "hidden_size": 1024,
        "depth": 24,
        "num_heads": 16,
        "position_table_parameter": True,
    },
    # SiT/LightningDiT's SDE (g² = 2σ_t), the sampler of the paper's no-guidance numbers.
    "scheduler": {"shift": 2.5, "sde_diffusion": "sigma"},
}
# EfficientNet-Lite0's stride-16 stage on 128 px input: 8×8 tokens of width 112 (the demo presets).
_EFFICIENTNET_128: dict[str, Any] = {
    "kind": "efficientnet-lite0",
    "image_size": 128,
    "stage": "stride16",
    "feature_dim": 112,
    "grid_size": 8,
}
_TINY_FAE: dict[str, Any] = {
    "encoder": {
        "kind": "tiny-vit",
        "image_size": 32,
        "patch_size": 4,
        "width": 32,
        "depth": 1,
        "num_heads": 2,
        "feature_dim": 32,
        "grid_size": 8,
    },
    "compressor": {"num_heads": 2, "head_dim": 16, "latent_channels": 4},
    "feature_decoder": {"depth": 1, "num_heads": 2, "mlp_hidden": 64},
    "pixel_decoder": {"patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2},
    "scheduler": {"shift": 1.0},
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper-imagenet": {
        **_PAPER_FAE,
        "generator": {
            "kind": "lightning-dit",
            "hidden_size": 1152,
            "depth": 28,
            "num_heads": 16,
            "num_classes": 1000,
            "position_table_parameter": True,
        },
        "text_encoder": None,
    },
    "paper-t2i": {
        **_PAPER_FAE,
        "generator": {
            "kind": "mmdit",
            "hidden_size": 1024,
            "depth": 16,
            "num_heads": 16,
            "position_table_parameter": True,
        },
        "text_encoder": {"kind": "t5", "path": None, "max_length": 128, "text_dim": 2048},
    },
    "demo": {
        "encoder": _EFFICIENTNET_128,
        "compressor": {"num_heads": 4, "head_dim": 64, "latent_channels": 16},
        "feature_decoder": {"depth": 4, "num_heads": 4, "mlp_hidden": 512},
        "pixel_decoder": {"patch_size": 16, "hidden_size": 384, "depth": 6, "num_heads": 6},
        "generator": {"kind": "mmdit", "hidden_size": 384, "depth": 8, "num_heads": 6},
        "scheduler": {"shift": 1.5},
        "text_encoder": {"kind": "minilm", "max_length": 32, "text_dim": 384},
    },
    # The demo recipe at a size a 2-core CPU trains in well under an hour: the same encoders, 64 px output
    # (encoder input 128 px, stride-16 tokens, pixel patch 8).
    "demo-cpu": {
        "encoder": _EFFICIENTNET_128,
        "compressor": {"num_heads": 4, "head_dim": 32, "latent_channels": 16},
        "feature_decoder": {"depth": 2, "num_heads": 4, "mlp_hidden": 448},
        "pixel_decoder": {
            "patch_size": 8,
            "hidden_size": 192,
            "depth": 4,
            "num_heads": 4,
            "refine_channels": 32,
        },
        "generator": {"kind": "mmdit", "hidden_size": 192, "depth": 6, "num_heads": 4},
        "scheduler": {"shift": 1.5},
        "text_encoder": {"kind": "minilm", "max_length": 16, "text_dim": 384},
    },
    "tiny": {
        **_TINY_FAE,
        "generator": {
            "kind": "lightning-dit",
            "hidden_size": 32,
            "depth": 2,
            "num_heads": 2,
            "num_classes": 10,
        },
        "text_encoder": None,
    },
    "tiny-t2i": {
        **_TINY_FAE,
        "generator": {"kind": "mmdit", "hidden_size": 32, "depth": 2, "num_heads": 2},
        "text_encoder": {"kind": "hash", "embed_dim": 32, "max_length": 16, "text_dim": 32},
    },
}
