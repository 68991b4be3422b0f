"""Fine-tunes: datasets stored before the job is queued, bad uploads refused cleanly, adapters."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime

from core.contract import FINETUNE_MIN_IMAGES, AdapterRecord, JobStatus, adapter_key


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def images(png, count: int = FINETUNE_MIN_IMAGES, field: str = "files") -> list:
    """`count` small PNGs as multipart files, the smallest dataset the trainer takes by default."""
    return [(field, (f"img{i}.png", png((i, 0, 0)), "image/png")) for i in range(count)]


def test_multipart_images_are_stored_before_the_job_is_queued(make_gateway, headers, png) -> None:
    gw = make_gateway()
    files = [
        ("files", ("cat one.png", png(), "image/png")),
        ("files", ("cat one.txt", b"a cat", "text/plain")),
        *images(png, FINETUNE_MIN_IMAGES - 1),
    ]
    data = {"steps": "20", "rank": "4", "trigger_phrase": "sks cat", "metadata": '{"team": "a"}'}
    response = gw.client.post("/v1/finetunes", files=files, data=data, headers=headers("acme"))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "finetune" and job["status"] == "queued" and job["model"] == "cls"
    assert job["request"]["steps"] == 20 and job["request"]["dataset_images"] == FINETUNE_MIN_IMAGES
    assert job["metadata"] == {"team": "a"}
    assert response.headers["location"] == f"/v1/finetunes/{job['id']}"
    prefix = f"tenants/acme/datasets/{job['id']}/"
    assert gw.storage.list(prefix)[:2] == [prefix + "cat_one.png", prefix + "cat_one.txt"]
    assert [j.id for j in gw.queue.enqueued] == [job["id"]]
    shown = gw.client.get(f"/v1/finetunes/{job['id']}", headers=headers("acme")).json()
    assert shown["id"] == job["id"]
    listed = gw.client.get("/v1/finetunes", headers=headers("acme")).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_zip_uploads_are_unpacked_safely(make_gateway, headers, png) -> None:
    gw = make_gateway()
    archive = zip_of(
        {
            "set/a.png": png(),
            "set/b.png": png((0, 0, 255)),
            "set/a.txt": b"caption",
            **{f"set/more{i}.png": png((i, 9, 9)) for i in range(FINETUNE_MIN_IMAGES - 2)},
            "__MACOSX/set/._a.png": b"junk",
            "../../escape.png": png(),
        }
    )
    response = gw.client.post(
        "/v1/finetunes", files={"files": ("data.zip", archive, "application/zip")}, headers=headers("acme")
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    stored = gw.storage.list(f"tenants/acme/datasets/{job_id}/")
    # Hidden, macOS and path-traversal entries are skipped; the rest keeps its layout.
    names = sorted(key.rsplit(f"{job_id}/", 1)[1] for key in stored)
    assert names[:3] == ["set/a.png", "set/a.txt", "set/b.png"] and len(names) == FINETUNE_MIN_IMAGES + 1


def test_bad_datasets_are_refused_and_leave_nothing_behind(make_gateway, headers, png) -> None:
    gw = make_gateway(max_upload_bytes=64 * 1024)
    cases = [
        ({"files": ("notes.exe", b"MZ", "application/octet-stream")}, 422),
        ({"files": ("fake.png", b"not an image", "image/png")}, 422),
        ({"files": ("only.txt", b"caption", "text/plain")}, 422),
        ({"files": ("broken.zip", b"PK-not-really", "application/zip")}, 422),
        ({"files": ("bomb.zip", zip_of({"big.png": b"\0" * (200 * 1024)}), "application/zip")}, 413),
        ({"other": ("a.png", png(), "image/png")}, 422),
    ]
    for files, status in cases:
        response = gw.client.post("/v1/finetunes", files=files, headers=headers("acme"))
        assert response.status_code == status, (files, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert gw.storage.list("tenants/acme/") == []
    assert gw.queue.enqueued == []
    too_big = gw.client.post(
        "/v1/finetunes", files={"files": ("a.png", b"\0" * (80 * 1024), "image/png")}, headers=headers("acme")
    )
    assert too_big.status_code == 413
    bad_param = gw.client.post(
        "/v1/finetunes",
        files={"files": ("a.png", png(), "image/png")},
        data={"rank": "999"},
        headers=headers("acme"),
    )
    assert bad_param.status_code == 422 and bad_param.json()["errors"][0]["loc"] == ["body", "rank"]
    assert gw.storage.list("tenants/acme/") == []


def test_s3_prefix_must_be_the_tenants_own_and_not_empty(make_gateway, headers, png) -> None:
    gw = make_gateway()
    for i in range(FINETUNE_MIN_IMAGES):
        gw.storage.put_bytes(f"tenants/acme/uploads/set1/{i}.png", png())
    gw.storage.put_bytes("tenants/globex/private/a.png", png())
    ok = gw.client.post(
        "/v1/finetunes", json={"s3_prefix": "tenants/acme/uploads/set1"}, headers=headers("acme")
    )
    assert ok.status_code == 202, ok.text
    assert ok.json()["request"]["s3_prefix"] == "tenants/acme/uploads/set1/"
    for prefix in (
        "tenants/globex/private/",
        "tenants/acme/../globex/private/",
        "tenants/acme/empty/",
        "tenants/acme/",
    ):
        response = gw.client.post("/v1/finetunes", json={"s3_prefix": prefix}, headers=headers("acme"))
        assert response.status_code == 422, prefix
    assert gw.client.post("/v1/finetunes", json={}, headers=headers("acme")).status_code == 422
    both = gw.client.post(
        "/v1/finetunes",
        files={"files": ("a.png", png(), "image/png")},
        data={"s3_prefix": "tenants/acme/uploads/set1/"},
        headers=headers("acme"),
    )
    assert both.status_code == 422
    wrong_type = gw.client.post(
        "/v1/finetunes", content=b"x", headers={**headers("acme"), "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    unknown_model = gw.client.post(
        "/v1/finetunes",
        json={"s3_prefix": "tenants/acme/uploads/set1/", "model": "nope"},
        headers=headers("acme"),
    )
    assert unknown_model.status_code == 422


def test_finetune_cancel_and_adapter_lifecycle(make_gateway, headers, png) -> None:
    gw = make_gateway()
    job = gw.client.post("/v1/finetunes", files=images(png), headers=headers("acme")).json()
    canceled = gw.client.post(f"/v1/finetunes/{job['id']}/cancel", headers=headers("acme"))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert gw.store.get(job["id"]).status is JobStatus.canceled

    gw.storage.put_bytes("tenants/acme/adapters/ad1/adapter.safetensors", b"weights")
    created_at = datetime(2025, 1, 1, tzinfo=UTC)
    gw.store.put_adapter(
        AdapterRecord(
            id="ad1",
            tenant="acme",
            model="cls",
            key=adapter_key("acme", "ad1"),
            name="style",
            created_at=created_at,
        )
    )
    (adapter,) = gw.client.get("/v1/adapters", headers=headers("acme")).json()["data"]
    assert {k: v for k, v in adapter.items() if v is not None} == {
        "id": "ad1",
        "model": "cls",
        "name": "style",
        "created_at": "2025-01-01T00:00:00Z",
    }  # the tenant and the storage key are bookkeeping, not shown
    generate = gw.client.post(
        "/v1/generate", json={"class_label": 1, "adapter": "ad1"}, headers=headers("acme")
    )
    assert generate.status_code == 202
    assert gw.client.delete("/v1/adapters/ad1", headers=headers("acme")).status_code == 204
    assert gw.storage.list("tenants/acme/adapters/") == []
    assert gw.client.delete("/v1/adapters/ad1", headers=headers("acme")).status_code == 404
    gone = gw.client.post("/v1/generate", json={"class_label": 1, "adapter": "ad1"}, headers=headers("acme"))
    assert gone.status_code == 422
