"""The OpenAI-compatible route, `response_format: b64_json` and negative prompts, through the real embedded
server; the OpenAI route with the official `openai` SDK, changing only its `base_url`."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image


@pytest.fixture
def server(embedded_server: Any) -> Any:
    return embedded_server()


def generate(server: Any, **body: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.post("/v1/generate", json={"steps": 4, **body}, headers={"Prefer": "wait=60"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    return job


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def image_bytes(server: Any, output: dict[str, Any]) -> bytes:
    if output["b64_json"] is not None:
        return base64.b64decode(output["b64_json"])
    return httpx.get(output["url"], timeout=30).content


def test_the_openai_sdk_generates_images_by_changing_base_url(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
    inline = client.images.generate(
        model="tiny-t2i", prompt="red apple", n=2, size="32x32", response_format="b64_json"
    )
    assert len(inline.data) == 2 and inline.created > 0
    for image in inline.data:
        decoded = Image.open(io.BytesIO(base64.b64decode(image.b64_json)))
        assert decoded.format == "PNG" and decoded.size == (32, 32) and image.url is None
    linked = client.images.generate(prompt="red apple")  # the default model, size and format (url)
    (image,) = linked.data
    fetched = httpx.get(image.url, timeout=30)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")


def test_openai_errors_come_in_openais_shape(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(prompt="red apple", size="1024x1024")
    assert size.value.status_code == 400
    assert size.value.body["param"] == "size" and "32x32" in size.value.body["message"]
    assert size.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as model:
        client.images.generate(prompt="red apple", model="dall-e-3")
    assert model.value.body["param"] == "model" and "tiny-t2i" in model.value.body["message"]
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.images.generate(prompt="red apple", quality="hd")
    assert unsupported.value.body["param"] == "quality"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt="red apple", n=9)
    assert too_many.value.body["param"] == "n"
    stranger = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.images.generate(prompt="red apple")
    assert denied.value.body["type"] == "authentication_error"
    with server.client() as raw:  # our own routes keep answering problem JSON
        assert (
            raw.post("/v1/generate", json={"prompt": "x", "size": "32x32"})
            .headers["content-type"]
            .startswith("application/problem+json")
        )


def test_b64_json_on_our_own_api_carries_the_stored_image(server: Any) -> None:
    linked = generate(server, prompt="red apple", seed=11)
    inline = generate(server, prompt="red apple", seed=11, n=2, response_format="b64_json")
    assert linked["outputs"][0]["b64_json"] is None and linked["outputs"][0]["url"]
    storage = server.app.state.services.storage
    for output in inline["outputs"]:
        assert output["url"] is None
        assert base64.b64decode(output["b64_json"]) == storage.get_bytes(output["key"])
    assert pixels(image_bytes(server, inline["outputs"][0])).shape == (32, 32, 3)
    with server.client() as client:  # the job reads back the same way
        again = client.get(f"/v1/jobs/{inline['id']}").json()
    assert again["outputs"] == inline["outputs"]
    with server.client() as client:  # a listing carries URLs: a page never reads every image into memory
        listed = {job["id"]: job for job in client.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    assert all(o["url"] and o["b64_json"] is None for o in listed[inline["id"]]["outputs"])
    storage.delete_prefix(f"tenants/{inline['tenant']}/jobs/{inline['id']}/")  # retention removed the images
    with server.client() as client:
        gone = client.get(f"/v1/jobs/{inline['id']}")
    assert gone.status_code == 200 and all(o["b64_json"] is None for o in gone.json()["outputs"])


def test_a_negative_prompt_changes_the_image_the_running_worker_makes(server: Any) -> None:
    body = {"prompt": "red apple", "seed": 3, "guidance_scale": 8.0}
    plain, plain_again = generate(server, **body), generate(server, **body)
    negative = generate(server, **body, negative_prompt="blurry, green")
    plain_pixels = pixels(image_bytes(server, plain["outputs"][0]))
    again = np.abs(pixels(image_bytes(server, plain_again["outputs"][0])) - plain_pixels)
    changed = np.abs(pixels(image_bytes(server, negative["outputs"][0])) - plain_pixels)
    assert again.max() == 0  # absent: the empty prompt's branch, the same image as before
    assert changed.max() > 0 and changed.mean() > 0.1  # in 0..255 levels (a tiny random model's image)
    assert negative["request"]["negative_prompt"] == "blurry, green"


def test_images_not_ready_within_the_max_wait_answer_504_and_the_job_is_canceled(
    embedded_server: Any,
) -> None:
    server = embedded_server(step_delay_s=0.2, max_wait_s=1)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as late:
        client.images.generate(prompt="red apple")  # 50 steps of 0.2 s
    assert late.value.status_code == 504 and late.value.body["code"] == "timeout"
    with server.client() as raw:
        (job,) = raw.get("/v1/jobs").json()["data"]
        assert job["cancel_requested"] or job["status"] == "canceled"
        deadline = time.monotonic() + 30
        while raw.get(f"/v1/jobs/{job['id']}").json()["status"] != "canceled":
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_retry_of_a_timed_out_request_is_told_the_job_was_canceled(embedded_server: Any) -> None:
    """The request that created the job cancels it at its timeout; a retry with the same Idempotency-Key never
    cancels anything and, once the job is canceled, answers 409 (send a new request), not a server error."""
    server = embedded_server(step_delay_s=0.2, max_wait_s=1)
    body, key = {"prompt": "red apple"}, {"Idempotency-Key": "retry-me-1"}
    with server.client() as client:
        first = client.post("/v1/images/generations", json=body, headers=key)
        assert first.status_code == 504 and first.json()["error"]["code"] == "timeout"
        (job,) = client.get("/v1/jobs").json()["data"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "canceled":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        retry = client.post("/v1/images/generations", json=body, headers=key)
    assert retry.status_code == 409, retry.text
    assert (
        retry.json()["error"]["code"] == "canceled"
        and "send a new request" in retry.json()["error"]["message"]
    )
