"""The shipped few-step student (models/fae-demo-turbo): served by name in embedded mode's default catalog,
its limits in its scheduler config, within the shipped-weights budget, and it draws what it is asked for in
4 steps with no guidance of the request's own (the same colour checks as the teacher's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.settings import Settings
from fae.embedded import embedded_settings
from model.repository import SHIPPED_DEMO_DIR, SHIPPED_FEW_STEP_DIR, load_pipeline

from .test_shipped_model import foreground_hues


def test_embedded_mode_serves_it_by_name_beside_the_default(tmp_path: Path) -> None:
    settings, _ = embedded_settings(Settings().override(data_dir=tmp_path, models=""))
    dirs = settings.catalog.model_dirs()
    assert dirs["default"] == SHIPPED_DEMO_DIR and dirs["fae-demo-turbo"] == SHIPPED_FEW_STEP_DIR


def test_its_limits_and_size() -> None:
    scheduler = json.loads((SHIPPED_FEW_STEP_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["supported_steps"] == [1, 2, 4] and scheduler["distilled_guidance"] == 4.0
    weights = [f for d in (SHIPPED_DEMO_DIR, SHIPPED_FEW_STEP_DIR) for f in d.rglob("*.safetensors")]
    assert sum(f.stat().st_size for f in weights) <= 80 * 10**6
    record = json.loads((SHIPPED_FEW_STEP_DIR / "distillation.json").read_text())
    assert record["config"]["steps_supported"] == [1, 2, 4]


@pytest.mark.parametrize(
    ("prompt", "hue_range"), [("red apple", (-25.0, 15.0)), ("blue heart", (200.0, 275.0))]
)
def test_four_steps_draw_the_colour_the_prompt_names(prompt: str, hue_range: tuple[float, float]) -> None:
    pipe = load_pipeline(SHIPPED_FEW_STEP_DIR)
    images = pipe(prompt=prompt, num_images=4, seed=1, num_inference_steps=4, output_type="np").images
    for image in images:
        white, hues = foreground_hues(image)
        assert 0.1 < white < 0.9, f"{prompt}: an icon on a white background, not {white:.0%} white"
        hues = np.where(hues > 180 + hue_range[1], hues - 360, hues)
        inside = ((hues >= hue_range[0]) & (hues <= hue_range[1])).mean()
        assert inside > 0.5, f"{prompt}: only {inside:.0%} of the coloured pixels have the expected hue"
