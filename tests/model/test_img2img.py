"""Image-to-image on the model stack (tiny preset): strength 1 is plain generation bit for bit, samples that start
at different t share one step batch and each gets the image it gets alone, reconstruction, embeddings, the
input's orientation and alpha, and `fae generate --image`."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from fae.cli import main
from model.batching import DenoisingBatcher, DenoisingJob
from model.errors import InvalidInputError
from model.img2img import prepare_input_image, start_grid, steps_from
from model.pipeline import FAEPipeline


@pytest.fixture(scope="module")
def pipe() -> FAEPipeline:
    return FAEPipeline.from_preset("tiny", seed=0)


def photo(seed: int = 0, size: int = 40, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return PIL.Image.fromarray(rng.integers(0, 255, (size, size, channels), dtype=np.uint8), mode)


def run(pipe: FAEPipeline, **kw: object) -> torch.Tensor:
    return pipe(class_labels=1, num_inference_steps=6, seed=3, output_type="pt", **kw).images


def test_strength_one_is_plain_generation_and_lower_strength_stays_closer(pipe: FAEPipeline) -> None:
    image = photo()
    plain = run(pipe)
    assert torch.equal(run(pipe, image=image, strength=1.0), plain)
    recon = run(pipe, image=image, strength=0.0)
    near = run(pipe, image=image, strength=0.2)
    assert (near - recon).abs().mean() < (plain - recon).abs().mean()


def test_a_batch_of_an_img2img_sample_and_a_plain_one_gives_each_its_own_image(pipe: FAEPipeline) -> None:
    image = photo(1)
    alone_i2i, alone_plain = run(pipe, image=image, strength=0.5), run(pipe)
    batcher = DenoisingBatcher(pipe)
    i2i = pipe.prepare_samples(
        class_labels=1, num_inference_steps=6, seed=3, key="i2i", image=image, strength=0.5
    )
    plain = pipe.prepare_samples(class_labels=1, num_inference_steps=6, seed=3, key="plain")
    assert i2i[0].num_steps < plain[0].num_steps  # it starts later on the path
    batcher.add(DenoisingJob("i2i", i2i))
    batcher.add(DenoisingJob("plain", plain))
    results = {r.key: r.images for r in batcher.run_until_idle()}
    assert torch.equal(results["i2i"], alone_i2i) and torch.equal(results["plain"], alone_plain)


def test_the_start_grid_begins_at_the_strength_and_follows_the_schedule(pipe: FAEPipeline) -> None:
    scheduler = pipe.scheduler
    assert start_grid(scheduler, 10, 1.0) == scheduler.timesteps(10).double().tolist()
    steps = steps_from(scheduler, 20, 0.3)
    grid = start_grid(scheduler, steps, 0.3)
    assert 1 <= steps < 20 and abs(grid[0] - 0.3) < 1e-6 and grid[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(grid))


def test_strength_needs_an_image_and_stays_in_range(pipe: FAEPipeline) -> None:
    with pytest.raises(InvalidInputError, match="needs an input image"):
        pipe.prepare_samples(class_labels=1, strength=0.5)
    with pytest.raises(InvalidInputError, match="strength"):
        pipe.prepare_samples(class_labels=1, image=photo(), strength=1.5)


def test_orientation_and_alpha(pipe: FAEPipeline) -> None:
    rgba = photo(2, mode="RGBA")
    flattened = prepare_input_image(rgba)
    array, alpha = np.asarray(flattened, dtype=np.float32), np.asarray(rgba)[..., 3:] / 255.0
    expected = np.asarray(rgba)[..., :3] * alpha + 255.0 * (1 - alpha)
    assert flattened.mode == "RGB" and np.abs(array - expected).max() <= 1.0
    upright = photo(3, size=30).crop((0, 0, 30, 20))
    exif = PIL.Image.Exif()
    exif[0x0112] = 8  # stored turned; shown after a 90° counter-clockwise turn
    stored = upright.transpose(PIL.Image.Transpose.ROTATE_270)
    stored.info["exif"] = exif.tobytes()
    stored.getexif()[0x0112] = 8
    assert np.array_equal(np.asarray(prepare_input_image(stored)), np.asarray(upright))


def test_embeddings_pool_the_latent_tokens(pipe: FAEPipeline) -> None:
    images = [photo(4), photo(5)]
    pooled, tokens = pipe.embed(images, "latent"), pipe.embed(images, "latent_tokens")
    grid = pipe.latent_shape[1] * pipe.latent_shape[2]
    assert tokens.shape == (2, grid, pipe.latent_shape[0])
    assert torch.allclose(tokens.mean(dim=1), pooled, atol=1e-6)
    assert pipe.embed(images, "encoder").shape == (2, pipe.encoder.feature_dim)
    with pytest.raises(InvalidInputError, match="unknown embedding kind"):
        pipe.embed(images, "clip")


def test_cli_generate_with_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m"
    assert main(["model-init", "--preset", "tiny", "--out", str(model)]) == 0
    source = tmp_path / "in.png"
    photo(6).save(source)
    base = ["generate", "--model", str(model), "--class-label", "1", "--steps", "4", "--seed", "1"]
    assert (
        main([*base, "--image", str(source), "--strength", "0.6", "--n", "2", "-o", str(tmp_path / "v.png")])
        == 0
    )
    assert (tmp_path / "v_0.png").exists() and (tmp_path / "v_1.png").exists()
    assert main([*base, "--image", str(source), "--strength", "0", "-o", str(tmp_path / "r.png")]) == 0
    assert PIL.Image.open(tmp_path / "r.png").size == (pipe_size := PIL.Image.open(tmp_path / "v_0.png").size)
    assert pipe_size[0] > 0
    capsys.readouterr()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main([*base, "--image", str(tmp_path / "bad.png"), "-o", str(tmp_path / "b.png")]) == 2
    assert "not a readable" in capsys.readouterr().err
    assert main([*base, "--strength", "0.5", "-o", str(tmp_path / "c.png")]) == 2


def test_img2img_with_adapters_peft_and_slots_in_one_batch(tmp_path: Path) -> None:
    """A brand adapter on a user's image: the slot path (mixed batch of an adapter's i2i sample and a plain
    sample) gives the peft path's image, and the adapter changes the i2i output."""
    from model.adapters import AdapterSlots
    from tests.model.test_slot_lora import make_adapter, perturbed_pipe

    pipe = perturbed_pipe("tiny")
    adapter = make_adapter(pipe, tmp_path / "brand")
    image, kw = photo(8), {"class_labels": 2, "num_inference_steps": 6, "guidance_scale": 2.0, "seed": 4}
    base = pipe(**kw, image=image, strength=0.5, output_type="pt").images
    pipe.load_adapter(adapter, adapter_id="brand")
    peft = pipe(**kw, image=image, strength=0.5, output_type="pt").images
    pipe.unload_adapter("brand", evict=True)
    assert not torch.allclose(peft, base, atol=1e-4)
    slots = AdapterSlots.attach(pipe.generator, 2, 8, max_batch=8)
    slot = slots.load(adapter, "brand", 1.0)
    batcher = DenoisingBatcher(pipe)
    samples = pipe.prepare_samples(**kw, key="i2i", image=image, strength=0.5, adapter_slot=slot)
    batcher.add(DenoisingJob("i2i", samples))
    batcher.add(DenoisingJob("plain", pipe.prepare_samples(**kw, key="plain")))
    results = {r.key: r.images for r in batcher.run_until_idle()}
    assert torch.allclose(results["i2i"], peft, atol=1e-4)
