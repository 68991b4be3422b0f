"""The model commands of `fae`: model-info, model-init, generate, and their errors (exit code 2, one clear line)."""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image
import pytest

from fae.cli import main


def test_model_info_json_matches_the_paper_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model-info", "--preset", "paper-imagenet", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["parameters"]
    expected = {
        "compressor": 38.17e6,
        "feature_decoder": 170.43e6,
        "pixel_decoder": 305.36e6,
        "generator": 675.26e6,
    }
    for name, value in expected.items():
        assert abs(counts[name] - value) / value < 0.0015  # tests/model/test_paper_shapes.py pins each


def test_model_init_then_generate_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "tiny"
    assert main(["model-init", "--preset", "tiny", "--out", str(model)]) == 0
    assert (model / "model_index.json").is_file()
    out = tmp_path / "out" / "img.png"
    args = [
        "generate",
        "--model",
        str(model),
        "--class-label",
        "3",
        "--n",
        "2",
        "--steps",
        "3",
        "--seed",
        "5",
    ]
    assert main([*args, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for i, seed in enumerate((5, 6)):
        path = tmp_path / "out" / f"img_{i}.png"
        assert f"{path}  seed={seed}" in printed
        with PIL.Image.open(path) as image:
            assert image.size == (32, 32) and image.format == "PNG"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--class-label", "10"], "out of range"),
        (["--prompt", "a cat"], "class-conditional"),
        (["--class-label", "1", "--steps", "0"], "from 1 to 250"),
        (["--class-label", "1", "--steps", "10000"], "from 1 to 250"),
        (["--class-label", "1", "--guidance-interval", "0.5:0.2:3"], "t_min < t_max"),
        (
            ["--class-label", "1", "--guidance-interval", "0:0.5:2", "--guidance-interval", "0.4:1:2"],
            "overlap",
        ),
    ],
)
def test_generate_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    model = tmp_path / "tiny"
    main(["model-init", "--preset", "tiny", "--out", str(model)])
    capsys.readouterr()
    assert main(["generate", "--model", str(model), *args, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fae generate: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_missing_model_directory_and_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--model", str(tmp_path / "nope"), "--class-label", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["model-init", "--preset", "tiny", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_preset_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model-info", "--preset", "huge"])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_a_malformed_guidance_interval_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--class-label", "1", "--guidance-interval", "0:1"])
    assert exit_info.value.code == 2 and "T_MIN:T_MAX:SCALE" in capsys.readouterr().err
