"""Training stages Ia, Ib, ib-recon and II: losses fall, outputs load, and resume equals an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.errors import InvalidInputError, TrainingCanceled
from model.repository import load_pipeline
from model.training.checkpoints import CheckpointStore
from model.training.config import TrainConfig
from model.training.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_stage_loss_falls_on_a_fixed_dataset(trained_tiny) -> None:
    stages = trained_tiny.report["stages"]
    assert list(stages) == ["ia", "ib", "ib-recon", "ii"]
    for name, stage in stages.items():
        # ib-recon starts from the trained Ib decoder, so it has less to gain
        assert stage["loss_end"] < (0.9 if name == "ib-recon" else 0.7) * stage["loss_start"], (name, stage)
    assert trained_tiny.report["dataset"]["num_images"] == 36


def test_the_trained_model_loads_with_latent_statistics_and_generates(trained_tiny) -> None:
    pipe = load_pipeline(trained_tiny.model_dir)
    config = pipe.generator.config
    assert len(config.latent_mean) == len(config.latent_std) == pipe.latent_shape[0]
    assert all(s > 0 for s in config.latent_std)
    images = pipe(class_labels=[0, 1], num_inference_steps=4, seed=0, output_type="np").images
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0.0 and images.max() <= 1.0
    # the stage II latents are standardised: the cached training latents have mean ≈ 0, std ≈ 1 per channel
    cache = next(trained_tiny.model_dir.with_name("model.work").glob("cache/latents-*"))
    mean = torch.from_numpy(__import__("numpy").load(cache / "mean.npy"))
    normalised = pipe.normalize_latents(mean.flatten(0, 1))
    assert normalised.mean().abs() < 0.2


def test_stage_ia_stores_the_feature_statistics_the_decoder_maps_back_with(trained_tiny) -> None:
    import numpy as np

    pipe = load_pipeline(trained_tiny.model_dir)
    config = pipe.feature_decoder.config
    cache = next(trained_tiny.model_dir.with_name("model.work").glob("cache/features-*"))
    features = np.load(cache / "features.npy").astype(np.float64)
    np.testing.assert_allclose(config.feature_mean, features.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(config.feature_std, features.std(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    # and the decoder's output lives at the features' scale, not the RMSNorm's
    latents = pipe.encode_images(torch.rand(4, 3, 32, 32))
    decoded = pipe.feature_decoder(pipe.denormalize_latents(latents))
    expected_rms = float(np.sqrt((features**2).mean()))
    assert 0.5 * expected_rms < decoded.pow(2).mean().sqrt().item() < 2.0 * expected_rms


def test_stage_ia_on_an_existing_model_keeps_its_decoder_unstandardised(
    shapes_dir: Path, tmp_path: Path
) -> None:
    # A decoder trained without statistics outputs raw features: giving it statistics later would break it.
    from model import FAEPipeline

    FAEPipeline.from_preset("tiny").save_pretrained(tmp_path / "old")
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=2)
    train(data=shapes_dir, out_dir=tmp_path / "new", model_dir=tmp_path / "old", stage="ia", config=config)
    assert load_pipeline(tmp_path / "new").feature_decoder.config.feature_std is None


def test_text_conditions_draw_each_images_caption_variants_reproducibly() -> None:
    from model.training.generator import TextConditions

    def encode(prompts: list[str]) -> dict[str, torch.Tensor]:  # row i of every output encodes prompts[i]
        ids = torch.tensor([float(sum(map(ord, p))) for p in prompts])
        return {
            "text_tokens": ids.view(-1, 1, 1),
            "text_mask": torch.ones(len(prompts), 1, dtype=torch.bool),
            "text_pooled": ids.view(-1, 1),
        }

    choices = [("a full caption", "short"), ("only one",)]
    conditions = TextConditions(encode, choices)
    code = {float(sum(map(ord, p))): p for p in ["a full caption", "short", "only one", ""]}

    def draw(seed: int, drop: bool = False) -> list[str]:
        images = torch.tensor([0, 1] * 50)
        rows = conditions.batch(images, torch.full((100,), drop), torch.Generator().manual_seed(seed))
        return [code[float(v)] for v in rows["text_pooled"][:, 0]]

    first = draw(0)
    assert set(first[0::2]) == {"a full caption", "short"} and set(first[1::2]) == {"only one"}
    assert draw(0) == first and draw(1) != first  # the step's generator decides
    assert set(draw(0, drop=True)) == {""}
    # a dataset with one caption per image draws nothing from the generator
    single, rng = TextConditions(encode, ["x", "y"]), torch.Generator().manual_seed(0)
    single.batch(torch.tensor([0, 1]), torch.zeros(2, dtype=torch.bool), rng)
    assert torch.equal(rng.get_state(), torch.Generator().manual_seed(0).get_state())


def test_a_text_conditional_generator_trains_on_captions(shapes_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=60, batch_size=16, learning_rate=2e-3, checkpoint_every=60, ema_decay=0.9)
    report = train(
        data=shapes_dir,
        out_dir=tmp_path / "t2i",
        preset="tiny-t2i",
        stage="all",
        config=config,
        show_progress=False,
    )
    stage = report["stages"]["ii"]
    assert stage["loss_end"] < 0.8 * stage["loss_start"]
    pipe = load_pipeline(tmp_path / "t2i")
    assert (
        pipe(
            prompt="a red circle on a blue background", num_inference_steps=3, output_type="pt"
        ).images.shape[0]
        == 1
    )


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*/*.safetensors")):
        tensors.update({f"{path.parent.name}/{k}": v for k, v in load_file(str(path)).items()})
    return tensors


def test_a_run_resumed_after_an_interruption_equals_an_uninterrupted_one(
    shapes_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        steps=6,
        recon_steps=4,
        batch_size=8,
        learning_rate=1e-3,
        checkpoint_every=2,
        ema_decay=0.9,
        adversarial_weight=0.1,
    )
    common = {
        "data": shapes_dir,
        "preset": "tiny",
        "config": config,
        "cache_dir": tmp_path / "cache",
        "show_progress": False,
    }
    train(out_dir=tmp_path / "straight", **common)

    calls = {"n": 0}

    def cancel_in_stage_ib() -> bool:  # killed in the middle of the second stage, off a checkpoint boundary
        calls["n"] += 1
        return calls["n"] == 6 + 3

    progress: list[dict] = []
    with pytest.raises(TrainingCanceled):
        train(
            out_dir=tmp_path / "resumed",
            cancel_check=cancel_in_stage_ib,
            progress_callback=lambda **kw: progress.append(kw),
            **common,
        )
    assert CheckpointStore(tmp_path / "resumed.work" / "checkpoints" / "ib").latest() == 2
    assert progress[-1]["step"] == 3 and progress[-1]["total"] == 6 and progress[-1]["loss"] > 0
    assert progress[-1]["eta_s"] is not None
    report = train(out_dir=tmp_path / "resumed", resume=True, **common)
    assert report["stages"]["ia"]["resumed_from_step"] == 6  # finished stages are not run again
    assert report["stages"]["ib"]["resumed_from_step"] == 2  # lost only the steps after the last checkpoint

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and len(straight) > 20
    for key, tensor in straight.items():
        assert torch.equal(tensor, resumed[key]), key
    assert (
        json.loads((tmp_path / "straight/generator/config.json").read_text())["latent_std"]
        == json.loads((tmp_path / "resumed/generator/config.json").read_text())["latent_std"]
    )
    assert not list((tmp_path / "resumed.work" / "checkpoints").glob("*/.*"))  # no temporaries left behind


def test_existing_checkpoints_need_resume_and_the_same_settings(shapes_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=4, checkpoint_every=1)
    common = {
        "data": shapes_dir,
        "out_dir": tmp_path / "m",
        "preset": "tiny",
        "stage": "ia",
        "show_progress": False,
    }
    train(config=config, **common)
    with pytest.raises(InvalidInputError, match="already holds checkpoints"):
        train(config=config, **common)
    with pytest.raises(InvalidInputError, match=r"different settings.*lr"):
        train(
            config=TrainConfig(steps=2, batch_size=4, checkpoint_every=1, learning_rate=0.01),
            resume=True,
            **common,
        )
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="exists and is not a model directory"):
        train(
            config=config,
            data=shapes_dir,
            out_dir=tmp_path / "occupied",
            preset="tiny",
            stage="ia",
            show_progress=False,
        )
    assert (tmp_path / "occupied" / "precious.txt").read_text() == "keep me"


def test_a_checkpoint_is_never_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    state = {"w": torch.arange(4.0)}
    for step in (1, 2, 3):
        store.save(step, state, {"task": "t"})
    assert store.steps() == [2, 3]  # older ones pruned

    real_write_text = Path.write_text

    def dies_writing_meta(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == "meta.json":
            raise OSError("disk full")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dies_writing_meta)
    with pytest.raises(OSError, match="disk full"):
        store.save(4, state, {"task": "t"})
    monkeypatch.undo()
    assert store.latest() == 3 and sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "step-000000002",
        "step-000000003",
    ]
    assert torch.equal(store.load(3, {"task": "t"})["w"], state["w"])


def test_fae_train_cli_writes_a_loadable_model(shapes_dir: Path, tmp_path: Path, capsys) -> None:
    from fae.cli import main

    out = tmp_path / "cli-model"
    # --stage all, 3 steps a stage (3 // 4 = 0 ib-recon steps: skipped)
    short_run = ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu"]
    source = ["--data", str(shapes_dir), "--out", str(out)]
    code = main(["train", "--preset", "tiny", *source, "--stage", "all", *short_run, "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["stages"]) == {"ia", "ib", "ii"}
    assert (out / "model_index.json").is_file()
    assert load_pipeline(out).generator.config.latent_mean is not None
    # rerun with --resume after the run finished: each stage says it is complete instead of training again
    rerun = ["--stage", "ia", *short_run, "--resume"]
    code = main(["train", "--model", str(out), *source, *rerun])
    assert code == 0 and "stage ia: already complete (3 steps)" in capsys.readouterr().out
    code = main(
        ["train", "--preset", "no-such-preset", "--data", str(shapes_dir), "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "unknown preset" in capsys.readouterr().err
