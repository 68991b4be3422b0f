"""Guidance intervals through the real embedded server: the API accepts a list of (t_min, t_max, scale), the
worker's engine applies it per sample, and bad bounds are 422 problems before any job exists."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from .conftest import EmbeddedServer


@pytest.fixture(scope="module")
def t2i_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text-to-image model with its generator perturbed: a fresh one's zero-initialised output does
    not depend on the prompt, so guidance would change nothing."""
    from model import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    directory = tmp_path_factory.mktemp("models") / "tiny-t2i-perturbed"
    pipe.save_pretrained(str(directory))
    return directory


def generate(server: EmbeddedServer, **body: Any) -> np.ndarray:
    with server.client() as client:
        response = client.post(
            "/v1/generate",
            json={"prompt": "red apple", "steps": 4, "seed": 7, "response_format": "b64_json", **body},
            headers={"Prefer": "wait=60"},
        )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    png = base64.b64decode(job["outputs"][0]["b64_json"])
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_an_interval_list_is_accepted_and_guides_the_image(
    embedded_server: Callable[..., EmbeddedServer],
) -> None:
    server = embedded_server()
    plain = generate(server)
    intervals = generate(server, guidance_intervals=[{"t_min": 0.0, "t_max": 0.9, "scale": 5.0}])
    assert np.abs(plain - intervals).max() > 2  # guided where the list says
    # the paper's text-to-image preset is that very list
    assert np.array_equal(intervals, generate(server, guidance_schedule="fae-t2i", guidance_scale=5.0))
    # an interval that no step's t falls in (4 steps, shift 1: t = 1, 0.75, 0.5, 0.25) guides nothing
    untouched = generate(server, guidance_intervals=[{"t_min": 0.8, "t_max": 0.9, "scale": 5.0}])
    assert np.array_equal(plain, untouched)


BAD_INTERVALS: list[tuple[list[dict[str, float]], dict[str, Any], str]] = [
    ([{"t_min": 0.6, "t_max": 0.2, "scale": 2.0}], {}, "must be below t_max"),
    ([{"t_min": 0.0, "t_max": 1.5, "scale": 2.0}], {}, "less than or equal to 1"),
    ([{"t_min": 0.0, "t_max": 0.5, "scale": -1.0}], {}, "greater than or equal to 0"),
    ([{"t_min": 0.0, "t_max": 0.6, "scale": 2}, {"t_min": 0.5, "t_max": 1, "scale": 3}], {}, "overlap"),
    ([], {}, "at least 1"),
    ([{"t_min": 0.0, "t_max": 0.5}], {}, "Field required"),
    ([{"t_min": 0.0, "t_max": 0.5, "scale": 2.0}], {"guidance_schedule": "fae-three-part"}, "not both"),
]


def test_bad_intervals_are_422_problems(embedded_server: Callable[..., EmbeddedServer]) -> None:
    server = embedded_server()
    with server.client() as client:
        for intervals, extra, words in BAD_INTERVALS:
            body = {"prompt": "red apple", "guidance_intervals": intervals, **extra}
            response = client.post("/v1/generate", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert words in response.text, (body, problem)
            if not extra:
                assert all(error["loc"][:2] == ["body", "guidance_intervals"] for error in problem["errors"])
        jobs = client.get("/v1/jobs")
        assert jobs.status_code == 200 and jobs.json()["data"] == []  # nothing was queued
