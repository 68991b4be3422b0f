"""Brand fine-tunes: the adapter moves outputs toward the brand images, resumes exactly, refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import FAEPipeline
from model.adapters import CONFIG_NAME, WEIGHTS_NAME
from model.data import scan_image_folder
from model.errors import AdapterError, AdapterMismatchError, DatasetError, InvalidInputError, TrainingCanceled
from model.io import write_directory_atomically
from model.repository import load_pipeline
from model.synthetic import write_dataset
from model.training.lora import run_finetune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = {"steps": 120, "rank": 4, "learning_rate": 3e-3, "batch_size": 8, "checkpoint_every": 40}


@pytest.fixture(scope="module")
def brand_adapter(trained_tiny, brand_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("adapter") / "brand"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_finetune(base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=out, **SETTINGS)
    finally:
        torch.set_num_threads(before)
    return report


def encoder_distance(pipe: FAEPipeline, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance between the images' and the reference set's mean-pooled frozen-encoder features."""
    with torch.no_grad():
        features = pipe.encoder(images).mean(1)
        centre = pipe.encoder(reference).mean(1).mean(0)
    return float((features - centre).norm(dim=-1).mean())


def test_the_adapter_moves_outputs_toward_the_brand_and_unloading_restores_them(
    trained_tiny, brand_dir: Path, brand_adapter: dict[str, Any]
) -> None:
    pipe = load_pipeline(trained_tiny.model_dir)
    brand = scan_image_folder(brand_dir)
    reference = torch.stack([brand.load(i, pipe.image_size) for i in range(len(brand))]).float() / 255
    request = {"class_labels": list(range(6)), "num_inference_steps": 12, "seed": 0, "output_type": "pt"}
    base = pipe(**request).images
    pipe.load_adapter(brand_adapter["adapter_dir"], adapter_id="brand")
    adapted = pipe(**request).images
    pipe.unload_adapter("brand")
    assert torch.equal(pipe(**request).images, base)  # exactly the base outputs again

    base_distance = encoder_distance(pipe, base, reference)
    adapted_distance = encoder_distance(pipe, adapted, reference)
    assert adapted_distance < 0.5 * base_distance, (base_distance, adapted_distance)


def test_the_report_and_the_adapter_record_the_run(brand_adapter: dict[str, Any], trained_tiny) -> None:
    report = brand_adapter
    assert report["dataset"]["num_images"] == 12 and report["dataset"]["num_skipped"] == 2
    assert {s["file"] for s in report["dataset"]["skipped"]} == {"corrupt.png", "readme.md"}
    assert report["label_mode"] == "random" and report["steps"] == 120
    assert report["loss_end"] < report["loss_start"]
    adapter_dir = Path(report["adapter_dir"])
    assert {p.name for p in adapter_dir.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    assert report["adapter_bytes"] < 200_000
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    assert config["base_model"]["fingerprint"] == report["base_fingerprint"]
    assert config["rank"] == 4 and config["training"]["steps"] == 120
    assert not adapter_dir.with_name("brand.work").exists()  # checkpoints and cache removed after success


def test_the_adapter_is_refused_by_another_base(brand_adapter: dict[str, Any]) -> None:
    other = FAEPipeline.from_preset("tiny", seed=0)
    with pytest.raises(AdapterMismatchError, match="another base model"):
        other.load_adapter(brand_adapter["adapter_dir"])


def test_a_canceled_finetune_resumes_to_the_same_adapter(
    trained_tiny, brand_dir: Path, tmp_path: Path
) -> None:
    settings = {**SETTINGS, "steps": 10, "checkpoint_every": 4}
    straight = run_finetune(
        base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "a", **settings
    )
    steps_seen: list[int] = []

    def progress(**update: Any) -> None:
        steps_seen.append(update["step"])

    with pytest.raises(TrainingCanceled):
        run_finetune(
            base_dir=trained_tiny.model_dir,
            images_dir=brand_dir,
            out_dir=tmp_path / "b",
            progress_callback=progress,
            cancel_check=lambda: len(steps_seen) >= 7,
            **settings,
        )
    assert not (tmp_path / "b").exists()  # no half-made adapter
    resumed = run_finetune(
        base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "b", **settings
    )
    assert resumed["resumed_from_step"] == 4
    a, b = (Path(r["adapter_dir"]) / WEIGHTS_NAME for r in (straight, resumed))
    assert a.read_bytes() == b.read_bytes()


def test_too_few_or_too_many_images_and_bad_settings_are_clear_errors(
    trained_tiny, brand_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    few = write_dataset(tmp_path / "few", 9, "brand", seed=0, size=32)
    with pytest.raises(DatasetError, match=r"9 usable images.*at least 10"):
        run_finetune(base_dir=trained_tiny.model_dir, images_dir=few, out_dir=tmp_path / "out")
    with pytest.raises(InvalidInputError, match="class label 10 is out of range"):
        run_finetune(
            base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "out", class_label=10
        )
    monkeypatch.setattr("model.training.lora.FINETUNE_MAX_IMAGES", 11)
    with pytest.raises(DatasetError, match="more than 11"):
        run_finetune(base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "out")
    with pytest.raises(InvalidInputError, match="rank"):
        run_finetune(base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "out", rank=0)
    assert not (tmp_path / "out").exists()
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "precious.txt").write_text("keep me")
    with pytest.raises(AdapterError, match="not an adapter directory"):
        run_finetune(base_dir=trained_tiny.model_dir, images_dir=brand_dir, out_dir=tmp_path / "occupied")
    assert [p.name for p in (tmp_path / "occupied").iterdir()] == ["precious.txt"]


def test_a_text_finetune_uses_the_trigger_phrase_and_leaves_a_shared_pipeline_alone(
    brand_dir: Path, tmp_path: Path
) -> None:
    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-Zero: an untrained generator would give LoRA no gradient
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    request = {"prompt": "acme style", "num_inference_steps": 4, "seed": 0, "output_type": "pt"}
    before = pipe(**request).images
    report = run_finetune(
        pipeline=pipe,
        images_dir=brand_dir,
        out_dir=tmp_path / "t2i",
        trigger_phrase="acme style",
        steps=8,
        rank=2,
        learning_rate=1e-3,
        batch_size=4,
    )
    assert torch.equal(pipe(**request).images, before)  # the serving pipeline was not touched
    assert report["condition_type"] == "text" and report["trigger_phrase"] == "acme style"
    assert report["unique_captions"] == 2  # "acme style <caption>" and the empty prompt
    pipe.load_adapter(report["adapter_dir"])
    assert not torch.equal(pipe(**request).images, before)
    with pytest.raises(InvalidInputError, match="text-conditional"):
        run_finetune(pipeline=pipe, images_dir=brand_dir, out_dir=tmp_path / "x", class_label=1)


def test_fae_finetune_and_generate_with_the_adapter(
    trained_tiny, brand_dir: Path, tmp_path: Path, capsys
) -> None:
    from fae.cli import main

    adapter = tmp_path / "adapter"
    code = main(
        [
            "finetune",
            "--base",
            str(trained_tiny.model_dir),
            "--images",
            str(brand_dir),
            "--out",
            str(adapter),
            "--steps",
            "5",
            "--rank",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "12 images, 2 skipped" in output and "skipped corrupt.png" in output
    image = tmp_path / "out.png"
    code = main(
        [
            "generate",
            "--model",
            str(trained_tiny.model_dir),
            "--adapter",
            str(adapter),
            "--class-label",
            "3",
            "--steps",
            "4",
            "--seed",
            "0",
            "--device",
            "cpu",
            "-o",
            str(image),
        ]
    )
    assert code == 0 and image.is_file()
    other = tmp_path / "other"
    write_directory_atomically(other, FAEPipeline.from_preset("tiny", seed=5).save_pretrained)
    code = main(
        [
            "generate",
            "--model",
            str(other),
            "--adapter",
            str(adapter),
            "--class-label",
            "3",
            "--steps",
            "2",
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "x.png"),
        ]
    )
    assert code == 2 and "trained on another base model" in capsys.readouterr().err
    assert np.asarray(__import__("PIL.Image").Image.open(image)).shape == (32, 32, 3)
