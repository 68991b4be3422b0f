"""The pixel decoder's adversarial term: a discriminator head on the frozen encoder's features, the VQGAN
adaptive weight at the decoder's last layer, a delayed start, and the presets' defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from model.data import open_image_dataset
from model.latent_cache import LatentCache
from model.pipeline import FAEPipeline
from model.training.autoencoder import PixelDecoderTask
from model.training.config import TrainConfig
from model.training.discriminator import EncoderFeatureDiscriminator, adaptive_weight
from model.training.train_loop import LoopOptions, run_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    torch.manual_seed(0)
    body, last = nn.Linear(4, 8), nn.Linear(8, 3)
    out = last(torch.tanh(body(torch.randn(5, 4))))
    reconstruction, adversarial = out.abs().mean(), -(out**3).mean()
    weight = adaptive_weight(reconstruction, adversarial, last.weight)
    rec = torch.autograd.grad(reconstruction, last.weight, retain_graph=True)[0].norm()
    adv = torch.autograd.grad(adversarial, last.weight, retain_graph=True)[0].norm()
    assert weight.item() == pytest.approx((rec / (adv + 1e-4)).item(), rel=1e-6)
    assert not weight.requires_grad
    tiny = adaptive_weight(reconstruction, 1e-12 * adversarial, last.weight, max_weight=50.0)
    assert tiny.item() == 50.0  # capped


def test_presets_default_the_adversarial_term_on_for_paper_and_demo() -> None:
    assert TrainConfig().for_preset("paper-imagenet").adversarial_weight == 0.75
    assert TrainConfig().for_preset("demo-cpu").adversarial_weight == 0.75
    assert TrainConfig().for_preset("tiny").adversarial_weight == 0.0
    assert TrainConfig().for_preset(None).adversarial_weight == 0.0  # --model runs: only when asked
    assert TrainConfig(adversarial_weight=0.0).for_preset("demo").adversarial_weight == 0.0


def test_encoder_discriminator_starts_late_and_trains_the_decoder_through_the_frozen_encoder(
    shapes_dir: Path, tmp_path: Path
) -> None:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    features = LatentCache(tmp_path).features(open_image_dataset(shapes_dir), pipe.encoder, pipe.image_size)
    config = TrainConfig(steps=6, batch_size=8, learning_rate=1e-3, adversarial_weight=0.5, seed=1)
    task = PixelDecoderTask("noisy", pipe.pixel_decoder, pipe.encoder, features, config, torch.device("cpu"))
    assert isinstance(task.discriminator, EncoderFeatureDiscriminator)
    assert task.adversarial_start == 3 and task.fingerprint()["discriminator"] == "encoder"
    encoder_before = {k: v.clone() for k, v in pipe.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in task.discriminator.state_dict().items()}

    for step in range(3):  # before the start: no discriminator step, no adaptive weight
        task.train_step(step, torch.Generator().manual_seed(step))
    assert task.last_adaptive_weight is None
    assert all(torch.equal(v, task.discriminator.state_dict()[k]) for k, v in head_before.items())

    for step in range(3, 6):
        task.train_step(step, torch.Generator().manual_seed(step))
    assert task.last_adaptive_weight is not None and task.last_adaptive_weight > 0
    assert any(not torch.equal(v, task.discriminator.state_dict()[k]) for k, v in head_before.items())
    for key, value in pipe.encoder.state_dict().items():  # frozen: the gradient only passes through
        assert torch.equal(value, encoder_before[key]), key
    assert not any(p.requires_grad for p in pipe.encoder.parameters())


def test_patch_discriminator_remains_an_option(shapes_dir: Path, tmp_path: Path) -> None:
    pipe = FAEPipeline.from_preset("tiny", seed=0)
    features = LatentCache(tmp_path).features(open_image_dataset(shapes_dir), pipe.encoder, pipe.image_size)
    config = TrainConfig(
        steps=4, batch_size=8, adversarial_weight=0.5, adversarial_start=0, discriminator="patch"
    )
    task = PixelDecoderTask("noisy", pipe.pixel_decoder, pipe.encoder, features, config, torch.device("cpu"))
    result = run_loop(task, LoopOptions(steps=4, seed=0, show_progress=False), torch.device("cpu"))
    assert len(result.losses) == 4 and task.last_adaptive_weight is not None
