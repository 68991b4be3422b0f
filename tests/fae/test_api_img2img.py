"""Image-to-image, reconstruction and embeddings through the real embedded server (gateway, in-process worker,
local storage, the tiny text-to-image model): the three ways to send an image, the stored input, strength 1
equal to plain generation, variations, and a clear 4xx for every bad image."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.contract import input_key


def png(seed: int = 0, size: int = 48, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, channels), dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb judged by its header)."""
    data = bytearray(png(size=4))
    ihdr = bytes(data[12:29])  # type + 13 bytes of IHDR data
    patched = ihdr[:4] + struct.pack(">II", width, height) + ihdr[12:]
    data[12:29] = patched
    data[29:33] = struct.pack(">I", zlib.crc32(patched))
    return bytes(data)


def pixels(job: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(o["b64_json"])))) for o in job["outputs"]]


def generate(client: Any, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a red square", "steps": 4, "seed": 7, "response_format": "b64_json", **fields}
    response = client.post("/v1/generate", json=body, headers={"Prefer": "wait=60"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def server(embedded_server: Any) -> Any:
    return embedded_server()


def test_strength_one_is_plain_generation_and_lower_strengths_start_from_the_image(server: Any) -> None:
    image = data_uri(png(1))
    with server.client() as client:
        plain = pixels(generate(client))
        full = generate(client, image=image, strength=1.0)
        half = pixels(generate(client, image=image, strength=0.5))
        low = pixels(generate(client, image=image, strength=0.2))
    assert np.array_equal(pixels(full)[0], plain[0])
    assert not np.array_equal(half[0], plain[0]) and not np.array_equal(low[0], half[0])
    # the job names the stored input (never the data URI), under its own prefix
    assert full["request"]["image"] == input_key("acme", full["id"], 0, "png")
    assert server.app.state.services.storage.exists(full["request"]["image"])


def test_multipart_upload_a_storage_key_variations_and_reconstruction(server: Any) -> None:
    with server.client() as client:
        form = {
            "prompt": "a blue circle",
            "steps": "4",
            "seed": "3",
            "strength": "0.6",
            "n": "3",
            "response_format": "b64_json",
            "metadata": '{"sku": "A1"}',
        }
        response = client.post(
            "/v1/generate",
            data=form,
            files={"image": ("in.png", png(2), "image/png")},
            headers={"Prefer": "wait=60"},
        )
        assert response.status_code == 200, response.text
        varied = response.json()
        assert varied["status"] == "succeeded" and varied["metadata"] == {"sku": "A1"}
        assert varied["seeds"] == [3, 4, 5]
        outs = pixels(varied)
        assert len(outs) == 3 and not np.array_equal(outs[0], outs[1])  # variations: one image, three seeds
        # a key in the tenant's own storage: here the first variation, fed back in
        own_key = varied["outputs"][0]["key"]
        again = generate(client, image=own_key, strength=0.3)
        assert again["request"]["image"].startswith(f"tenants/acme/jobs/{again['id']}/inputs/")
        recon = generate(client, image=own_key, strength=0)
        assert len(recon["outputs"]) == 1
        assert pixels(recon)[0].shape == outs[0].shape


@pytest.mark.parametrize(
    ("fields", "status", "needle"),
    [
        ({"image": "data:image/png;base64,iVBOR"}, 422, "base64"),
        ({"image": "data:text/plain;base64," + base64.b64encode(b"hello").decode()}, 422, "data URI"),
        ({"image": data_uri(b"GIF89a not really")}, 422, "PNG, JPEG or WebP"),
        ({"image": data_uri(bomb_png())}, 422, "pixels"),
        ({"image": "tenants/other/jobs/x/0.png"}, 422, "tenants/acme/"),
        ({"image": "tenants/acme/nothing-here.png"}, 422, "no object"),
        ({"strength": 0.5}, 422, "needs an `image`"),
        ({"image": data_uri(png()), "strength": 1.5}, 422, "strength"),
        ({"image": data_uri(png()), "strength": 0, "n": 2}, 422, "reconstruction"),
    ],
)
def test_bad_images_get_clear_problems(server: Any, fields: dict[str, Any], status: int, needle: str) -> None:
    with server.client() as client:
        response = client.post("/v1/generate", json={"prompt": "x", "steps": 2, **fields})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.json()["detail"]


def test_too_large_images_are_413_and_a_multipart_request_needs_its_file(embedded_server: Any) -> None:
    server = embedded_server(max_dataset_file_bytes=4096)
    big = png(size=128)
    assert len(big) > 4096
    with server.client() as client:
        as_json = client.post("/v1/generate", json={"prompt": "x", "image": data_uri(big)})
        as_part = client.post(
            "/v1/generate", data={"prompt": "x"}, files={"image": ("a.png", big, "image/png")}
        )
        no_file = client.post(
            "/v1/generate", data={"prompt": "x"}, files={"other": ("a.png", png(), "image/png")}
        )
        embed = client.post("/v1/embeddings", files=[("images", ("a.png", big, "image/png"))])
    assert as_json.status_code == 413 and as_part.status_code == 413 and embed.status_code == 413
    assert no_file.status_code == 422 and "image" in no_file.json()["detail"]


def test_exif_orientation_and_alpha_are_applied_before_encoding(server: Any) -> None:
    """A transparent image embeds like the same image on white; a rotated one with its EXIF tag like upright."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    alpha = np.full((40, 40, 1), 255, dtype=np.uint8)
    alpha[:20] = 0
    on_white = rgb.copy()
    on_white[:20] = 255
    rgba = np.concatenate([rgb, alpha], axis=2)

    def encoded(array: np.ndarray, exif: Image.Exif | None = None) -> str:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG", exif=exif) if exif else Image.fromarray(array).save(
            buffer, "PNG"
        )
        return data_uri(buffer.getvalue())

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed after a 90° clockwise turn
    stored_rotated = np.rot90(rgb, k=1)  # what a camera stores for orientation 6
    images = [encoded(rgba), encoded(on_white), encoded(stored_rotated, exif), encoded(rgb)]
    with server.client() as client:
        response = client.post("/v1/embeddings", json={"images": images, "kind": "encoder"})
    assert response.status_code == 200, response.text
    vectors = [np.array(item["embedding"]) for item in response.json()["data"]]
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)
    assert np.allclose(vectors[2], vectors[3], atol=1e-4)


def test_embeddings_json_and_multipart(server: Any) -> None:
    with server.client() as client:
        latent = client.post("/v1/embeddings", json={"images": [data_uri(png(1)), data_uri(png(2))]})
        assert latent.status_code == 200, latent.text
        body = latent.json()
        assert body["kind"] == "latent" and len(body["data"]) == 2 and body["model"] == "tiny-t2i"
        assert len(body["data"][0]["embedding"]) == body["dimensions"]
        tokens = client.post(
            "/v1/embeddings",
            data={"kind": "latent_tokens"},
            files=[("images", ("a.png", png(1), "image/png"))],
        ).json()
        grid = tokens["data"][0]["embedding"]
        assert len(grid[0]) == tokens["dimensions"] == body["dimensions"] and len(grid) > 1
        # pooling the tokens gives the pooled latent
        assert np.allclose(np.mean(grid, axis=0), body["data"][0]["embedding"], atol=1e-5)
        encoder = client.post("/v1/embeddings", json={"images": [data_uri(png(1))], "kind": "encoder"}).json()
        assert encoder["dimensions"] != body["dimensions"]
        bad = client.post("/v1/embeddings", json={"images": [data_uri(bomb_png())]})
        assert bad.status_code == 422 and "pixels" in bad.json()["detail"]
        wrong = client.post("/v1/embeddings", content=b"x", headers={"Content-Type": "text/plain"})
        assert wrong.status_code == 415
        unknown = client.post("/v1/embeddings", json={"images": [data_uri(png())], "kind": "clip"})
        assert unknown.status_code == 422
        job = client.get(f"/v1/jobs/{body['job_id']}").json()  # the embed job, readable with its scope
        assert job["kind"] == "embed" and job["status"] == "succeeded"
