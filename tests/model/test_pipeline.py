"""FAEPipeline: determinism, per-image seeds, save/load, output types, bad input, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from model import FAEPipeline
from model.errors import GenerationCanceled, InvalidInputError, WeightsNotFoundError
from model.presets import PRESETS, parameter_counts
from model.repository import load_pipeline

PAPER_COUNTS = {
    "compressor": 38.17e6,
    "feature_decoder": 170.43e6,
    "pixel_decoder": 305.36e6,
    "generator": 675.26e6,
}


def perturbed(pipe: FAEPipeline, seed: int = 0) -> FAEPipeline:
    """adaLN-Zero makes an untrained generator output zeros; perturb it so outputs depend on everything."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return pipe


@pytest.fixture(scope="module")
def tiny() -> FAEPipeline:
    return perturbed(FAEPipeline.from_preset("tiny", seed=0))


@pytest.fixture(scope="module")
def tiny_t2i() -> FAEPipeline:
    return perturbed(FAEPipeline.from_preset("tiny-t2i", seed=0))


def test_paper_preset_parameter_counts_match_the_paper_within_one_percent() -> None:
    counts = parameter_counts("paper-imagenet")
    for name, expected in PAPER_COUNTS.items():
        assert abs(counts[name] - expected) / expected < 0.01, (name, counts[name], expected)


def test_paper_t2i_generator_matches_the_paper_mmdit() -> None:
    counts = parameter_counts("paper-t2i")
    assert abs(counts["generator"] - 603.46e6) / 603.46e6 < 0.01


def test_same_seed_same_image_and_different_seed_different_image(tiny: FAEPipeline) -> None:
    a = tiny(class_labels=3, seed=7, num_inference_steps=8, output_type="np").images
    b = tiny(class_labels=3, seed=7, num_inference_steps=8, output_type="np").images
    c = tiny(class_labels=3, seed=8, num_inference_steps=8, output_type="np").images
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("sampler", ["euler", "euler_maruyama"])
def test_batch_with_per_image_seeds_equals_one_at_a_time(tiny: FAEPipeline, sampler: str) -> None:
    kwargs = {"num_inference_steps": 12, "guidance_scale": 2.0, "sampler": sampler, "output_type": "np"}
    batch = tiny(class_labels=[1, 2, 5], seed=[11, 22, 33], **kwargs)
    assert batch.seeds == [11, 22, 33]
    for i, (label, seed) in enumerate([(1, 11), (2, 22), (5, 33)]):
        alone = tiny(class_labels=label, seed=seed, **kwargs).images
        np.testing.assert_allclose(batch.images[i], alone[0], atol=1e-5)


def test_text_conditional_batch_equals_one_at_a_time(tiny_t2i: FAEPipeline) -> None:
    kwargs = {"num_inference_steps": 6, "guidance_scale": 3.0, "output_type": "np"}
    batch = tiny_t2i(prompt=["red apple", "running shoe"], seed=[5, 6], **kwargs).images
    alone = tiny_t2i(prompt="running shoe", seed=6, **kwargs).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)
    other = tiny_t2i(prompt="blue whale", seed=6, **kwargs).images
    assert not np.allclose(other[0], alone[0])


def test_int_seed_numbers_images_and_num_images_repeats_the_condition(tiny: FAEPipeline) -> None:
    out = tiny(class_labels=4, num_images=3, seed=100, num_inference_steps=4, output_type="np")
    assert out.seeds == [100, 101, 102] and out.images.shape == (3, 32, 32, 3)
    drawn = tiny(class_labels=4, num_images=2, num_inference_steps=2).seeds
    assert len(drawn) == 2 and all(0 <= s < 2**53 for s in drawn)  # JSON-exact in JavaScript


def test_output_types(tiny: FAEPipeline) -> None:
    pil = tiny(class_labels=0, seed=1, num_inference_steps=2).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    pt = tiny(class_labels=0, seed=1, num_inference_steps=2, output_type="pt").images
    assert pt.shape == (1, 3, 32, 32) and float(pt.min()) >= 0 and float(pt.max()) <= 1
    arr = tiny(class_labels=0, seed=1, num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(arr[0], pt[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))


def test_save_load_round_trip_is_bit_identical(tiny: FAEPipeline, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "m")
    loaded = load_pipeline(tmp_path / "m", device="cpu")
    kwargs = {"class_labels": [2, 9], "seed": [1, 2], "num_inference_steps": 6, "guidance_scale": 1.5}
    a = tiny(output_type="pt", **kwargs).images
    b = loaded(output_type="pt", **kwargs).images
    assert torch.equal(a, b)


def test_feature_decoder_statistics_map_outputs_back_and_survive_save_load(tmp_path: Path) -> None:
    from model.fae import FeatureDecoder

    torch.manual_seed(0)
    decoder = FeatureDecoder(
        latent_channels=4, feature_dim=8, grid_size=2, depth=1, num_heads=2, mlp_hidden=16
    )
    latents = torch.randn(3, 4, 2, 2)
    standardised = decoder(latents)  # no statistics: the RMSNorm output as it is
    mean, std = [float(i) for i in range(8)], [0.5 + i for i in range(8)]
    decoder.set_feature_stats(mean, std)
    torch.testing.assert_close(decoder(latents), standardised * torch.tensor(std) + torch.tensor(mean))
    decoder.save_pretrained(tmp_path / "decoder")
    loaded = FeatureDecoder.from_pretrained(tmp_path / "decoder")
    assert loaded.config.feature_mean == mean and loaded.config.feature_std == std
    torch.testing.assert_close(loaded(latents), decoder(latents))
    with pytest.raises(InvalidInputError, match="8 finite means and 8 finite positive stds"):
        decoder.set_feature_stats(mean, [0.0] * 8)


@pytest.mark.parametrize("refine_channels", [0, 8])
def test_pixel_decoder_refinement_sees_across_patch_borders(refine_channels: int) -> None:
    from model.pixel_decoder import PixelDecoder

    torch.manual_seed(0)
    decoder = PixelDecoder(
        feature_dim=8,
        grid_size=2,
        patch_size=4,
        hidden_size=16,
        depth=0,
        num_heads=2,
        refine_channels=refine_channels,
    )
    features = torch.randn(1, 4, 8, requires_grad=True)
    image = decoder(features)
    assert image.shape == (1, 3, 8, 8)
    # the last pixel column of patch 0 (top left), against the token of patch 1 (top right); depth 0: no
    # attention mixes the tokens, so only the refinement can carry patch 1 into patch 0
    image[0, :, 0, 3].sum().backward()
    crosses = features.grad[0, 1].abs().sum().item() > 0
    assert crosses == (refine_channels > 0)


def test_text_pipeline_save_load_round_trip(tiny_t2i: FAEPipeline, tmp_path: Path) -> None:
    tiny_t2i.save_pretrained(tmp_path / "t")
    loaded = load_pipeline(tmp_path / "t", device="cpu")
    kwargs = {"prompt": "red apple", "seed": 3, "num_inference_steps": 4, "guidance_scale": 2.0}
    assert torch.equal(tiny_t2i(output_type="pt", **kwargs).images, loaded(output_type="pt", **kwargs).images)


def test_callback_reports_progress_and_cancels(tiny: FAEPipeline) -> None:
    seen: list[tuple[int, int]] = []
    tiny(class_labels=1, seed=0, num_inference_steps=5, callback=lambda s, t: seen.append((s, t)))
    assert seen == [(i, 5) for i in range(1, 6)]
    with pytest.raises(GenerationCanceled, match="after step 2 of 5"):
        tiny(class_labels=1, seed=0, num_inference_steps=5, callback=lambda s, t: s == 2)


def test_encode_then_decode_shapes(tiny: FAEPipeline) -> None:
    images = torch.rand(2, 3, 48, 40)
    latents = tiny.encode_images(images)
    assert latents.shape == (2, *tiny.latent_shape)
    assert tiny.decode_latents(latents).shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_labels": 10}, "out of range"),
        ({"class_labels": -1}, "out of range"),
        ({"prompt": "a cat"}, "class-conditional"),
        ({}, "needs class_labels"),
        ({"class_labels": 1, "num_inference_steps": 0}, "from 1 to 250"),
        ({"class_labels": 1, "num_inference_steps": 10000}, "from 1 to 250"),
        ({"class_labels": 1, "sampler": "dpm"}, "unknown sampler"),
        ({"class_labels": 1, "output_type": "jpeg"}, "output_type"),
        ({"class_labels": [1, 2], "seed": [1]}, "one per image"),
        ({"class_labels": 1, "num_images": 0}, "num_images"),
    ],
)
def test_bad_input_is_a_clear_error(tiny: FAEPipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        tiny(**{"num_inference_steps": 2, **kwargs})


def test_text_model_refuses_class_labels(tiny_t2i: FAEPipeline) -> None:
    with pytest.raises(InvalidInputError, match="text-conditional"):
        tiny_t2i(class_labels=1, num_inference_steps=2)


def test_unknown_preset_and_missing_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"unknown preset .huge.*tiny"):
        FAEPipeline.from_preset("huge")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"model_index\.json"):
        load_pipeline(tmp_path / "empty")


def test_every_preset_is_described() -> None:
    assert {"paper-imagenet", "paper-t2i", "demo", "tiny", "tiny-t2i"} <= set(PRESETS)
