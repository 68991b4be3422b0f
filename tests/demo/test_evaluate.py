"""demo.evaluate end to end on the `tiny-t2i` preset and a fake emoji dataset (seconds), plus its error paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import PIL.Image
import pytest

from demo.eval_inputs import EvaluationError, infer_preset, read_manifest
from demo.evaluate import format_table, main
from demo.grid import sample_grid, wrap_text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.pipeline import FAEPipeline

    path = tmp_path_factory.mktemp("model") / "tiny-t2i"
    FAEPipeline.from_preset("tiny-t2i", seed=1).save_pretrained(str(path))
    return path


def test_evaluate_end_to_end(
    tiny_model: Path, fake_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    report_path, grid_path = tmp_path / "report.json", tmp_path / "grid.png"
    argv = ["--model", str(tiny_model), "--data", str(fake_dataset), "--out", str(report_path)]
    argv += ["--n", "4", "--steps", "2", "--guidance", "2", "--batch-size", "3", "--grid", str(grid_path)]
    assert main([*argv, "--device", "cpu"]) == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))

    assert report["preset"] == "tiny-t2i"  # inferred from the saved component configs
    assert report["counts"] == {"train": 61, "heldout": 4, "prompts": 4}
    assert "TinyViTEncoder, 32-d" in report["feature_space"]
    fd = report["frechet_distance"]
    assert set(fd) == {"trained", "random", "real_matched", "real_halves"}
    assert all(math.isfinite(value) and value >= 0 for value in fd.values())
    adherence = report["prompt_adherence"]
    for key in ("trained", "random", "chance", "majority", "real_heldout"):
        assert set(adherence[key]) == {"category", "name", "style"}
        assert all(0.0 <= rate <= 1.0 for rate in adherence[key].values())
    # The fake set has 4 categories in equal-ish shares and one name per emoji and style pair.
    assert 0.15 < adherence["chance"]["category"] < 0.4
    assert adherence["chance"]["name"] == pytest.approx(2 / 65)
    assert adherence["majority"]["name"] == 0.5  # 4 prompts: 2 emoji in 2 styles
    memo = report["memorization"]
    assert 0.0 <= memo["generated_below_p5"] <= 1.0
    assert memo["generated_to_train"]["min"] <= memo["generated_to_train"]["median"]
    assert len(report["samples"]) == 4
    assert all(s["nearest_train"].startswith("train/") for s in report["samples"])
    with PIL.Image.open(grid_path) as grid:
        assert grid.size[0] > 4 * 100 and grid.mode == "RGB"
    out = capsys.readouterr().out
    assert "Fréchet distance" in out and "category match" in out and str(report_path) in out
    assert len(format_table(report).splitlines()) == 6  # header, FD, 3 match rates, memorisation

    # Same seed, same numbers.
    again = tmp_path / "again.json"
    assert main([*argv[:4], "--out", str(again), *argv[6:12], "--device", "cpu"]) == 0
    assert json.loads(again.read_text())["frechet_distance"] == fd


def test_evaluate_refuses_class_models_and_bad_data(
    tmp_path: Path, fake_dataset: Path, tiny_model: Path, capsys: pytest.CaptureFixture
) -> None:
    from model.pipeline import FAEPipeline

    class_model = tmp_path / "tiny"
    FAEPipeline.from_preset("tiny").save_pretrained(str(class_model))
    argv = ["--data", str(fake_dataset), "--out", str(tmp_path / "r.json"), "--device", "cpu"]
    assert main(["--model", str(class_model), *argv]) == 1
    assert "class-conditional" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing"), *argv]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()

    with pytest.raises(EvaluationError, match="prepare the data"):
        read_manifest(tmp_path)
    (fake_dataset / "train" / "1f340-noto.png").unlink()
    with pytest.raises(EvaluationError, match=r"1f340-noto\.png does not exist"):
        read_manifest(fake_dataset)


def test_infer_preset_needs_a_unique_match() -> None:
    from model.pipeline import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny-t2i")
    assert infer_preset(pipe) == "tiny-t2i"
    pipe.generator.register_to_config(depth=7)
    with pytest.raises(EvaluationError, match="matches no preset"):
        infer_preset(pipe)


def test_grid_writes_prompts_under_images() -> None:
    from demo.grid import _font

    images = [PIL.Image.new("RGB", (32, 32), (200, 0, 0)) for _ in range(5)]
    grid = sample_grid(images, [f"prompt {i}" for i in range(5)], columns=4, cell=64)
    assert grid.size[0] == 4 * 70 + 6 and grid.getpixel((10, 10)) == (200, 0, 0)
    # Text was drawn below the first image (some dark pixels in the caption band).
    band = grid.crop((6, 6 + 64, 6 + 64, 6 + 64 + 20)).convert("L")
    assert min(band.getdata()) < 128
    lines = wrap_text("a very long prompt " * 10, _font(11), 64, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith("…")
    with pytest.raises(ValueError, match="one caption per image"):
        sample_grid(images, ["only one"])
