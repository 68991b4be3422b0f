"""`POST /v1/provenance/verify` on real signed files (valid, tampered, unknown signer, none; another tenant's job
is never named), the per-tenant watermark policy, and datasets refused for do-not-train credentials."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image

from core.contract import Job, JobKind, JobStatus
from core.jobstore.base import utcnow
from core.provenance import ensure_development_signer, generation_manifest, load_signer_files, sign_image


def jpeg_bytes(size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").resize((size, size)).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def signed_for(job_id: str, signer_dir: Path) -> bytes:
    manifest = generation_manifest(
        job_id=job_id,
        index=0,
        model={"name": "cls", "version": None, "fingerprint": None},
        adapter=None,
        parameters={"seed": 1, "steps": 4, "guidance_scale": 1.0},
        watermark={"applied": False, "method": None},
        title="x.jpg",
    )
    return sign_image(
        jpeg_bytes(), "jpeg", manifest, load_signer_files(*ensure_development_signer(signer_dir)), False
    )


def flip_scan_byte(data: bytes) -> bytes:
    """One byte of the JPEG's entropy-coded pixels changed (after the start-of-scan header)."""
    position = data.rindex(b"\xff\xda") + 40
    changed = bytearray(data)
    changed[position] ^= 0x10 if changed[position] != 0xEF else 0x01
    return bytes(changed)


@pytest.fixture
def gateway(make_gateway, tmp_path: Path):
    chain, _ = ensure_development_signer(tmp_path / "ours")
    gw = make_gateway(c2pa_sign_cert=chain, watermark_opt_out_tenants="globex")
    job = Job(
        id=uuid.uuid4().hex,
        kind=JobKind.generate,
        status=JobStatus.succeeded,
        tenant="acme",
        created_at=utcnow(),
    )
    gw.store.create(job)
    gw.job_id = job.id
    return gw


def verify(gw, headers, tenant: str, data: bytes, name: str = "image.jpg"):
    return gw.client.post(
        "/v1/provenance/verify", files={"file": (name, data, "image/jpeg")}, headers=headers(tenant)
    )


def test_valid_credentials_name_the_job_only_to_its_tenant(gateway, headers, tmp_path: Path) -> None:
    image = signed_for(gateway.job_id, tmp_path / "ours")
    mine = verify(gateway, headers, "acme", image)
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["credentials"]["status"] == "valid" and body["credentials"]["job_id"] == gateway.job_id
    assert body["job_id"] == gateway.job_id
    assert body["credentials"]["digital_source_type"].endswith("/trainedAlgorithmicMedia")
    theirs = verify(gateway, headers, "globex", image).json()
    assert theirs["credentials"]["status"] == "valid"  # the signature is ours whoever asks...
    assert theirs["credentials"]["job_id"] is None and theirs["job_id"] is None  # ...the job is not theirs


def test_tampered_unknown_signer_and_none(gateway, headers, tmp_path: Path) -> None:
    image = signed_for(gateway.job_id, tmp_path / "ours")
    tampered = verify(gateway, headers, "acme", flip_scan_byte(image)).json()
    assert tampered["credentials"]["status"] == "tampered" and tampered["job_id"] is None
    assert "assertion.dataHash.mismatch" in tampered["credentials"]["failures"]
    stranger = verify(gateway, headers, "acme", signed_for(gateway.job_id, tmp_path / "someone-else")).json()
    assert stranger["credentials"]["status"] == "unknown_signer" and stranger["job_id"] is None
    plain = verify(gateway, headers, "acme", jpeg_bytes()).json()
    assert plain["credentials"]["status"] == "none" and plain["watermark"] == {
        "found": False,
        "job_id": None,
        "output_index": None,
    }


def test_bad_uploads_are_problems(gateway, headers) -> None:
    not_image = verify(gateway, headers, "acme", b"just some text")
    assert not_image.status_code == 422 and not_image.headers["content-type"] == "application/problem+json"
    assert (
        gateway.client.post("/v1/provenance/verify", files={"file": ("a.jpg", jpeg_bytes())}).status_code
        == 401
    )
    missing = gateway.client.post(
        "/v1/provenance/verify", headers=headers("acme"), files={"other": ("a", b"x")}
    )
    assert missing.status_code == 422


def test_only_allowed_tenants_may_turn_the_watermark_off(gateway, headers) -> None:
    body = {"class_label": 1, "model": "cls", "watermark": False}
    refused = gateway.client.post("/v1/generate", json=body, headers=headers("acme"))
    assert refused.status_code == 403 and refused.json()["type"].endswith(":watermark-required")
    assert gateway.queue.enqueued == []
    allowed = gateway.client.post("/v1/generate", json=body, headers=headers("globex"))
    assert allowed.status_code == 202 and allowed.json()["request"]["watermark"] is False
    default = gateway.client.post(
        "/v1/generate", json={"class_label": 1, "model": "cls"}, headers=headers("acme")
    )
    assert default.status_code == 202 and default.json()["request"]["watermark"] is True


def test_datasets_with_do_not_train_credentials_are_refused_naming_the_files(
    make_gateway, headers, png, tmp_path: Path
) -> None:
    gw = make_gateway()
    signer = load_signer_files(*ensure_development_signer(tmp_path / "camera"))
    entries = {
        "c2pa.ai_generative_training": {"use": "notAllowed"},
        "c2pa.ai_training": {"use": "notAllowed"},
    }
    do_not_train = {
        "claim_generator_info": [{"name": "a camera"}],
        "assertions": [{"label": "c2pa.training-mining", "data": {"entries": entries}}],
    }
    forbidden = sign_image(jpeg_bytes(64), "jpeg", do_not_train, signer, False)
    files = [("files", (f"ok-{i}.png", png(size=16 + i), "image/png")) for i in range(12)]
    files += [
        ("files", ("shoot-07.jpg", forbidden, "image/jpeg")),
        ("files", ("shoot-09.jpg", forbidden, "image/jpeg")),
    ]
    response = gw.client.post("/v1/finetunes", files=files, data={"model": "txt"}, headers=headers("acme"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "shoot-07.jpg" in detail and "shoot-09.jpg" in detail and "notAllowed" in detail
    assert gw.storage.list("tenants/acme/") == []  # nothing of the refused dataset is kept
