"""Storage backends: the local directory (signed URLs) and S3 against a real SeaweedFS server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from core.contract import Job, JobKind, JobOutput, JobStatus
from core.jobstore.base import utcnow
from core.settings import Settings
from core.storage import InvalidKey, LocalStorage, S3Storage, Storage, make_storage, presign_outputs


def exercise_backend(storage: Storage, tmp_path: Path) -> None:
    """The behaviour every backend shares."""
    storage.put_bytes("tenants/acme/jobs/j1/0.png", b"png-bytes", "image/png")
    storage.put_bytes("tenants/acme/jobs/j1/1.png", b"more", "image/png")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    storage.put_file("tenants/acme/adapters/a1/weights.bin", source)
    storage.put_bytes("tenants/acme/jobs/j10/0.png", b"other job")
    assert storage.get_bytes("tenants/acme/jobs/j1/0.png") == b"png-bytes"
    assert storage.exists("tenants/acme/jobs/j1/1.png")
    assert not storage.exists("tenants/acme/jobs/j1/9.png")
    with pytest.raises(FileNotFoundError):
        storage.get_bytes("tenants/acme/jobs/j1/9.png")
    assert storage.list("tenants/acme/jobs/j1/") == [
        "tenants/acme/jobs/j1/0.png",
        "tenants/acme/jobs/j1/1.png",
    ]
    assert len(storage.list("tenants/acme/jobs/j1")) == 3  # a plain string prefix, as in S3
    assert storage.list("tenants/nobody/") == []
    written = storage.download_prefix("tenants/acme/adapters/a1/", tmp_path / "dl")
    assert written == [tmp_path / "dl" / "weights.bin"]
    assert written[0].read_bytes() == source.read_bytes()
    storage.put_bytes("tenants/acme/jobs/j1/0.png", b"rewritten")  # a redelivered job overwrites its output
    assert storage.get_bytes("tenants/acme/jobs/j1/0.png") == b"rewritten"
    assert storage.delete_prefix("tenants/acme/jobs/j1/") == 2
    assert storage.list("tenants/acme/jobs/") == ["tenants/acme/jobs/j10/0.png"]
    assert storage.ping()


def test_local_storage_roundtrip_is_atomic(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    exercise_backend(storage, tmp_path)
    leftovers = [p for p in (tmp_path / "root").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    "key", ["../x", "/etc/passwd", "a/../../x", "a//b", ".fae-signing-key", "a/.hidden", ""]
)
def test_local_storage_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(InvalidKey):
        storage.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        storage.presign_get(key, 60)


def test_local_signed_urls_cover_key_and_expiry(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, public_url="http://gateway:8000/")
    url = storage.presign_get("tenants/acme/jobs/j1/0.png", 60)
    parts = urlsplit(url)
    assert url.startswith("http://gateway:8000/v1/files/tenants/acme/jobs/j1/0.png?")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    expires, signature = int(query["expires"]), query["signature"]
    assert storage.verify("tenants/acme/jobs/j1/0.png", expires, signature)
    assert not storage.verify("tenants/other/jobs/j1/0.png", expires, signature)
    assert not storage.verify("tenants/acme/jobs/j1/0.png", expires + 1, signature)
    assert not storage.verify("tenants/acme/jobs/j1/0.png", expires, signature[:-2] + "AA")
    assert not storage.verify("tenants/acme/jobs/j1/0.png", 1000, storage._signature("x", 1000))
    # The key lives beside the data: a restarted instance accepts the URL; another root does not.
    assert LocalStorage(tmp_path).verify("tenants/acme/jobs/j1/0.png", expires, signature)
    assert not LocalStorage(tmp_path / "elsewhere").verify("tenants/acme/jobs/j1/0.png", expires, signature)


def test_presign_outputs_fills_urls_and_expiry(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job = Job(
        id="j1",
        kind=JobKind.generate,
        status=JobStatus.succeeded,
        tenant="acme",
        created_at=utcnow(),
        outputs=[JobOutput(index=0, key="tenants/acme/jobs/j1/0.png", seed=1)],
    )
    signed = presign_outputs(job, storage, 120)
    assert signed.outputs[0].url.startswith("/v1/files/tenants/acme/jobs/j1/0.png?expires=")
    assert signed.outputs[0].expires_at > utcnow()
    assert job.outputs[0].url is None  # the stored job is untouched


def test_make_storage_picks_the_backend(tmp_path: Path) -> None:
    settings = Settings().override(
        data_dir=tmp_path, storage_backend="s3", s3_endpoint_url="http://127.0.0.1:1"
    )
    assert isinstance(make_storage(settings), S3Storage)
    assert isinstance(make_storage(Settings().override(data_dir=tmp_path)), LocalStorage)


@pytest.mark.services
def test_s3_storage_on_seaweedfs(s3_server, s3_bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(Settings().override(**s3_server.settings_fields(s3_bucket)).storage)
    exercise_backend(storage, tmp_path)


@pytest.mark.services
def test_s3_presigned_get_works_over_http_and_tampering_fails(s3_server, s3_bucket: str) -> None:
    storage = S3Storage(Settings().override(**s3_server.settings_fields(s3_bucket)).storage)
    storage.put_bytes("tenants/acme/jobs/j1/0.png", b"\x89PNG-data", "image/png")
    storage.put_bytes("tenants/other/jobs/j2/0.png", b"secret")
    url = storage.presign_get("tenants/acme/jobs/j1/0.png", 60)
    with httpx.Client(timeout=10) as client:
        response = client.get(url)
        assert response.status_code == 200
        assert response.content == b"\x89PNG-data"
        assert response.headers["content-type"] == "image/png"
        tampered = url.replace("tenants/acme/jobs/j1", "tenants/other/jobs/j2")
        assert client.get(tampered).status_code == 403
        unsigned = url.split("?")[0]
        assert client.get(unsigned).status_code in (401, 403)


@pytest.mark.services
def test_s3_ping_and_public_endpoint(s3_server, s3_bucket: str) -> None:
    fields = s3_server.settings_fields(s3_bucket)
    assert not S3Storage(Settings().override(**{**fields, "s3_bucket": "fae-no-such-bucket"}).storage).ping()
    public = S3Storage(
        Settings().override(**fields, s3_public_endpoint_url="https://files.example.com").storage
    )
    assert public.presign_get("k.png", 60).startswith(f"https://files.example.com/{s3_bucket}/k.png?")
    fresh = S3Storage(Settings().override(**{**fields, "s3_bucket": s3_bucket + "-new"}).storage)
    fresh.create_bucket()
    fresh.create_bucket()  # idempotent
    assert fresh.ping()
