"""Image-to-image on the shipped demo model (models/fae-demo), with margins: outputs stay much closer to their input
at strength 0.3 than at 1.0 (frozen-encoder features and pixels), distance grows with strength, reconstruction
is the closest, and at 0.6 a prompt naming another emoji pulls the output towards it. Inputs are the model's own
generations (no data to download); the benchmark (benchmarks/bench_img2img.py) measures held-out emoji."""

from __future__ import annotations

import pytest

from demo.eval_inputs import embed
from demo.img2img_eval import I2ISettings, pixels_at, steering, strength_sweep, to_pil
from model import FAEPipeline
from model.repository import load_pipeline

PROMPTS = ("red apple", "grinning face", "soccer ball", "crown", "penguin", "fire")
STEPS = 8


@pytest.fixture(scope="module")
def demo_pipe() -> FAEPipeline:
    return load_pipeline(None)


@pytest.fixture(scope="module")
def inputs(demo_pipe: FAEPipeline) -> list:
    made = demo_pipe(
        prompt=list(PROMPTS), num_inference_steps=STEPS, guidance_scale=4.0, seed=1, output_type="pt"
    )
    return to_pil(made.images.float())


def test_distance_to_the_input_grows_with_strength(demo_pipe: FAEPipeline, inputs: list) -> None:
    settings = I2ISettings(steps=STEPS, guidance=4.0, seed=100)  # other noise than the inputs were made from
    # Each image with another image's prompt (an edit): at strength 1 the output is that prompt's own drawing,
    # so how much of the input survives is what strength decides.
    others = [PROMPTS[(i + 1) % len(PROMPTS)] for i in range(len(PROMPTS))]
    rows, _ = strength_sweep(demo_pipe, inputs, others, (0.0, 0.3, 0.6, 1.0), settings)
    by = {row["strength"]: row for row in rows}
    for metric in ("feature_tokens", "pixel_rmse"):
        values = [by[s][metric] for s in (0.0, 0.3, 0.6, 1.0)]
        assert values == sorted(values), (metric, values)
    assert by[0.3]["pixel_rmse"] < 0.75 * by[1.0]["pixel_rmse"], rows
    # Features: reconstruction (strength 0) already costs most of the distance on this soft 64 px model, so
    # what strength adds is measured above that floor.
    floor = by[0.0]["feature_tokens"]
    assert by[0.3]["feature_tokens"] - floor < 0.5 * (by[1.0]["feature_tokens"] - floor), rows
    assert by[0.3]["feature_pooled"] < by[1.0]["feature_pooled"]


def test_a_prompt_naming_another_emoji_pulls_the_output_towards_it(
    demo_pipe: FAEPipeline, inputs: list
) -> None:
    settings = I2ISettings(steps=STEPS, guidance=4.0, seed=100)
    targets = [(i + 3) % len(PROMPTS) for i in range(len(PROMPTS))]  # another category each
    references = embed(demo_pipe.encoder, pixels_at([inputs[t] for t in targets], demo_pipe.image_size))
    result, _, _ = steering(
        demo_pipe, inputs, list(PROMPTS), [PROMPTS[t] for t in targets], references, 0.6, settings
    )
    assert result["to_target_with_target_prompt"] < 0.9 * result["to_target_with_own_prompt"], result
    assert result["closer_with_target_prompt"] >= 4 / 6, result
