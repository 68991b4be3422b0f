"""A few-step distilled student served like any model, through the real embedded server: selectable by name,
its supported step counts run (batched by the engine with the teacher's requests), any other step count and
any guidance of the request's own are 422 problems before a job exists; an adapter of the teacher is refused."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from .conftest import EmbeddedServer


def _png_data_uri() -> str:
    out = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


PIXEL = _png_data_uri()  # an input image for image-to-image


@pytest.fixture(scope="module")
def student_dir(t2i_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from model.repository import load_pipeline
    from model.training.distill import DistillConfig, distill
    from model.training.teacher_pairs import PairSettings

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("turbo")
    teacher = load_pipeline(t2i_model_dir)
    config = DistillConfig(
        pairs=PairSettings(count=8, teacher_steps=3, chunk_size=8),
        train_steps=3,
        batch_size=4,
        checkpoint_every=3,
    )
    distill(
        teacher,
        ["red apple", "rocket", "sun"],
        root / "tiny-turbo",
        config,
        root / "cache",
        log=lambda _: None,
    )
    return root / "tiny-turbo"


def _post(server: EmbeddedServer, body: dict[str, Any]) -> Any:
    with server.client() as client:
        return client.post(
            "/v1/generate",
            json={
                "prompt": "red apple",
                "seed": 7,
                "response_format": "b64_json",
                "watermark": False,
                **body,
            },
            headers={"Prefer": "wait=60"},
        )


def _image(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    png = base64.b64decode(job["outputs"][0]["b64_json"])
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_the_student_is_served_by_name_at_its_step_counts(
    embedded_server: Callable[..., EmbeddedServer], t2i_model_dir: Path, student_dir: Path
) -> None:
    server = embedded_server(
        models=f"tiny-t2i={t2i_model_dir},tiny-turbo={student_dir}", watermark_opt_out_tenants="acme"
    )  # no watermark: the same seed gives the same pixels in any job
    with server.client() as client:
        listed = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["tiny-turbo"]["supported_steps"] == [1, 2, 4]
    assert listed["tiny-turbo"]["distilled_guidance"] == 4.0
    assert listed["tiny-t2i"]["supported_steps"] is None
    one, four = (_image(_post(server, {"model": "tiny-turbo", "steps": n})) for n in (1, 4))
    assert one.shape == four.shape and np.abs(one - four).max() > 0  # the step count is honoured
    # Concurrent requests for the student and the teacher share the engine (each model its own batches).
    results: dict[str, np.ndarray] = {}

    def run(name: str, body: dict[str, Any]) -> None:
        results[name] = _image(_post(server, body))

    threads = [
        threading.Thread(target=run, args=(f"turbo{i}", {"model": "tiny-turbo", "steps": 4}))
        for i in range(3)
    ]
    threads.append(threading.Thread(target=run, args=("teacher", {"model": "tiny-t2i", "steps": 6})))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert len(results) == 4
    diffs = [int(np.abs(results[f"turbo{i}"] - four).max()) for i in range(3)]
    assert max(diffs) <= 2, (
        diffs
    )  # batched or alone, the same seed gives the same image (float rounding aside)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"steps": 3}, "steps", "it runs steps 1, 2, 4, not 3"),
        ({}, "steps", "not 50"),  # the API's default step count is the teacher's, not the student's
        ({"steps": 4, "guidance_scale": 4.0}, "guidance_scale", "guidance 4 built in"),
        ({"steps": 4, "guidance_schedule": "fae-t2i"}, "guidance_scale", "guidance 4 built in"),
        ({"steps": 4, "negative_prompt": "blurry"}, "negative_prompt", "would have no effect"),
        ({"steps": 4, "image": PIXEL, "strength": 0.5}, "strength", "not image-to-image at strength 0.5"),
        ({"steps": 4, "image": PIXEL}, "strength", "at strength 0.6"),  # the default strength
    ],
)
def test_other_step_counts_and_guidance_are_422(
    embedded_server: Callable[..., EmbeddedServer],
    t2i_model_dir: Path,
    student_dir: Path,
    body: dict[str, Any],
    field: str,
    words: str,
) -> None:
    server = embedded_server(models=f"tiny-t2i={t2i_model_dir},tiny-turbo={student_dir}")
    response = _post(server, {"model": "tiny-turbo", **body})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["errors"][0]["loc"] == ["body", field] and words in problem["detail"]
    with server.client() as client:
        assert client.get("/v1/jobs").json()["data"] == []  # refused before any job exists


def test_the_client_selects_the_student_and_reads_its_limits(
    embedded_server: Callable[..., EmbeddedServer], t2i_model_dir: Path, student_dir: Path
) -> None:
    from fae_client import FAEClient
    from fae_client.errors import UnprocessableEntityError

    server = embedded_server(models=f"tiny-t2i={t2i_model_dir},tiny-turbo={student_dir}")
    with FAEClient(base_url=server.base_url, api_key=server.api_key) as fae:
        turbo = {m.name: m for m in fae.models.list()}["tiny-turbo"]
        assert turbo.supported_steps == [1, 2, 4] and turbo.distilled_guidance == 4.0
        job = fae.generate(model="tiny-turbo", prompt="rocket", steps=2, seed=3, wait=60)
        assert job.status == "succeeded" and job.model == "tiny-turbo"
        with pytest.raises(UnprocessableEntityError, match="few-step model"):
            fae.generate(model="tiny-turbo", prompt="rocket", steps=8)
