"""Provenance through the real embedded server: its outputs verify with the C2PA SDK's reader (our assertions,
the development signer it made on first run) and a changed pixel byte fails; `fae verify` says the same
offline; a 576 px model's outputs carry the watermark, which traces a stripped, halved JPEG back to its job
for its own tenant only."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import c2pa
import httpx
import pytest
from PIL import Image

from core.provenance import GENERATION_ASSERTION, TRAINED_ALGORITHMIC_MEDIA
from tests.core.test_provenance import flip_png_pixel_byte

REPO = Path(__file__).resolve().parents[2]


def generate(client: httpx.Client, **body: object) -> dict:
    response = client.post(
        "/v1/generate", json={"prompt": "red apple", "steps": 2, **body}, headers={"Prefer": "wait=60"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    return job


def read_manifest(data: bytes, mime: str, ca_pem: bytes) -> tuple[str, dict]:
    settings = c2pa.Settings.from_dict({"trust": {"trust_anchors": ca_pem.decode()}})
    with (
        c2pa.Context(settings=settings) as context,
        c2pa.Reader(mime, io.BytesIO(data), None, context) as reader,
    ):
        return reader.get_validation_state(), reader.get_active_manifest()


def test_outputs_carry_valid_credentials_that_a_changed_byte_breaks(embedded_server, tmp_path: Path) -> None:
    server = embedded_server()
    ca_pem = (Path(server.settings.process.data_dir) / "provenance" / "dev-ca.pem").read_bytes()
    files: dict[str, bytes] = {}
    with server.client() as client:
        for fmt in ("png", "jpeg", "webp"):
            job = generate(client, output_format=fmt, seed=11, steps=3, guidance_scale=2.5)
            assert job["provenance"] == {"c2pa": True, "watermark": False}  # 32 px: too small for a watermark
            data = httpx.get(job["outputs"][0]["url"], timeout=10).content
            state, manifest = read_manifest(data, f"image/{fmt}", ca_pem)
            assert state == "Trusted", (fmt, state)
            assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
            (created,) = assertions["c2pa.actions.v2"]["actions"]
            assert (
                created["action"] == "c2pa.created"
                and created["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
            )
            assert created["softwareAgent"]["name"] == "fae-serve"
            generation = assertions[GENERATION_ASSERTION]
            assert generation["job_id"] == job["id"] and generation["output_index"] == 0
            assert generation["parameters"]["seed"] == 11 and generation["parameters"]["steps"] == 3
            assert generation["parameters"]["guidance_scale"] == 2.5
            assert generation["model"]["name"] == "tiny-t2i"
            assert generation["model"]["fingerprint"] == job["model_fingerprint"]
            files[fmt] = data
        tampered = flip_png_pixel_byte(files["png"])
        state, _ = read_manifest(tampered, "image/png", ca_pem)
        assert state == "Invalid"
        for data, expected in ((files["png"], "valid"), (tampered, "tampered")):
            answer = client.post("/v1/provenance/verify", files={"file": ("x.png", data, "image/png")}).json()
            assert answer["credentials"]["status"] == expected
        assert answer["job_id"] is None

    # `fae verify`, offline: trusts the development CA under FAE_DATA_DIR.
    (tmp_path / "good.png").write_bytes(files["png"])
    (tmp_path / "bad.png").write_bytes(tampered)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}
    env["FAE_DATA_DIR"] = str(server.settings.process.data_dir)
    command = [
        sys.executable,
        "-m",
        "fae.cli",
        "verify",
        "--json",
        str(tmp_path / "good.png"),
        str(tmp_path / "bad.png"),
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # one of them is not valid
    good, bad = (json.loads(line) for line in result.stdout.splitlines())
    assert good["credentials"] == "valid" and bad["credentials"] == "tampered"
    assert good["parameters"]["seed"] == 11 and good["watermark"] is None


@pytest.fixture(scope="session")
def model_576(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text model with a pixel decoder that draws 8 × 72 px patches: 576 px images, big enough for
    the watermark (72 px patches, faint: not periodic with the watermark's 64 px tile)."""
    import torch

    from model import FAEPipeline
    from model.pixel_decoder import PixelDecoder

    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    pipe.pixel_decoder = PixelDecoder(
        feature_dim=32, grid_size=8, patch_size=72, hidden_size=32, depth=1, num_heads=2
    )
    with torch.no_grad():
        pipe.pixel_decoder.pred.weight.mul_(0.2)
    directory = tmp_path_factory.mktemp("models") / "tiny-576"
    pipe.save_pretrained(str(directory))
    return directory


def test_the_watermark_traces_a_stripped_image_to_its_job_for_its_tenant_only(
    embedded_server, model_576: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "more-keys"
    keys.write_text("globex:globex-key-0123456789:generate\n")
    server = embedded_server(models=f"big={model_576}", api_keys_file=keys)
    with server.client() as client:
        job = generate(client, n=2, output_format="jpeg")
        assert job["provenance"] == {"c2pa": True, "watermark": True}
        image = Image.open(io.BytesIO(httpx.get(job["outputs"][1]["url"], timeout=10).content))
        assert image.size == (576, 576)
        # What a marketplace does: re-encode at quality 75 at half size; the credentials are gone.
        buffer = io.BytesIO()
        image.resize((288, 288), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=75)
        stripped = buffer.getvalue()
        mine = client.post("/v1/provenance/verify", files={"file": ("s.jpg", stripped, "image/jpeg")}).json()
        assert mine["credentials"]["status"] == "none"
        assert mine["watermark"] == {"found": True, "job_id": job["id"], "output_index": 1}
        assert mine["job_id"] == job["id"]
        theirs = client.post(
            "/v1/provenance/verify",
            files={"file": ("s.jpg", stripped, "image/jpeg")},
            headers={"Authorization": "Bearer globex-key-0123456789"},
        ).json()
        assert theirs["watermark"] == {"found": True, "job_id": None, "output_index": None}
        assert theirs["job_id"] is None
        refused = client.post("/v1/generate", json={"prompt": "x", "watermark": False})
        assert refused.status_code == 403
