"""Hostile fine-tune uploads (issue 14): zip bombs, lying zip headers and pixel bombs are refused with the
gateway's memory bounded, and a gateway unpacks only so many uploads at once."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib

import pytest

from core.contract import FINETUNE_MIN_IMAGES
from core.settings import Settings
from core.storage import S3Storage

MiB = 1024 * 1024


def zip_bomb(inflated_bytes: int, name: str = "big.png") -> bytes:
    """A small zip whose one member inflates to `inflated_bytes` of zeros (written in chunks: the test itself
    never holds the inflated bytes)."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open(name, "w", force_zip64=True) as member,
    ):
        for _ in range(inflated_bytes // MiB):
            member.write(bytes(MiB))
    return buffer.getvalue()


def lying_zip(inflated_bytes: int, declared: int) -> bytes:
    """A zip bomb whose headers (local and central) declare `declared` bytes for its member."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("liar.png", "w") as member,
    ):
        for _ in range(inflated_bytes // MiB):
            member.write(bytes(MiB))
    data = bytearray(buffer.getvalue())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local header: uncompressed size
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, declared)  # central directory: uncompressed size
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces `width` x `height` pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def post_upload(gw, headers, name: str, data: bytes):
    return gw.client.post(
        "/v1/finetunes", files={"files": (name, data, "application/zip")}, headers=headers("acme")
    )


def peak_python_bytes(action) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("archive", "status"),
    [
        pytest.param(lambda: zip_bomb(160 * MiB), 413, id="zip-bomb"),
        pytest.param(lambda: lying_zip(160 * MiB, declared=1000), 422, id="header-lies-small"),
    ],
)
def test_zip_bombs_are_refused_with_memory_bounded(make_gateway, headers, archive, status) -> None:
    gw = make_gateway(max_dataset_file_bytes=100 * MiB)
    payload = archive()
    assert len(payload) < 1 * MiB
    response, peak = peak_python_bytes(lambda: post_upload(gw, headers, "bomb.zip", payload))
    assert response.status_code == status, response.text
    assert peak < 24 * MiB, f"the gateway held {peak / MiB:.0f} MiB at once"
    assert gw.storage.list("tenants/acme/") == [] and gw.queue.enqueued == []


def test_the_dataset_budget_counts_inflated_bytes_across_members(make_gateway, headers, png) -> None:
    gw = make_gateway(max_upload_bytes=3 * MiB, max_dataset_file_bytes=2 * MiB)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(4):  # each under the per-file limit, together over the dataset's
            archive.writestr(f"{index}.txt", bytes(MiB - 1))
    response = post_upload(gw, headers, "data.zip", buffer.getvalue())
    assert response.status_code == 413 and "once unpacked" in response.json()["detail"]
    assert gw.storage.list("tenants/acme/") == []


def test_a_pixel_bomb_is_refused_before_decoding(make_gateway, headers, png) -> None:
    gw = make_gateway()
    bomb = png_header_only(12_000, 12_000)
    assert len(bomb) < 200
    response, peak = peak_python_bytes(
        lambda: gw.client.post(
            "/v1/finetunes", files={"files": ("bomb.png", bomb, "image/png")}, headers=headers("acme")
        )
    )
    assert response.status_code == 422 and "12000x12000 pixels" in response.json()["detail"], response.text
    assert peak < 16 * MiB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", png())
        archive.writestr("bomb.png", bomb)
    assert post_upload(gw, headers, "data.zip", buffer.getvalue()).status_code == 422
    assert gw.storage.list("tenants/acme/") == []


def test_uploads_past_the_concurrency_bound_get_503_with_retry_after(make_gateway, headers, png) -> None:
    gw = make_gateway(max_concurrent_uploads=1)
    slots = gw.client.app.state.services.uploads
    files = [("files", (f"a{i}.png", png((i, 0, 0)), "image/png")) for i in range(FINETUNE_MIN_IMAGES)]

    slots.take()  # another upload is unpacking
    busy = gw.client.post("/v1/finetunes", files=files, headers=headers("acme"))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "15", busy.text
    assert busy.json()["type"].endswith("uploads-busy") and gw.queue.enqueued == []
    assert gw.storage.list("tenants/acme/") == []
    slots.give_back()  # that upload finished
    assert gw.client.post("/v1/finetunes", files=files, headers=headers("acme")).status_code == 202


@pytest.mark.services
def test_a_finetune_upload_during_a_storage_outage_is_a_503(
    make_gateway, headers, png, s3_server, s3_bucket, s3_proxy
) -> None:
    fields = {**s3_server.settings_fields(s3_bucket), "s3_endpoint_url": f"http://127.0.0.1:{s3_proxy.port}"}
    storage = S3Storage(Settings().override(**fields).storage)
    gw = make_gateway(storage=storage)
    s3_proxy.cut()
    files = [("files", (f"a{i}.png", png((i, 0, 0)), "image/png")) for i in range(FINETUNE_MIN_IMAGES)]
    response = gw.client.post("/v1/finetunes", files=files, headers=headers("acme"))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "10" and response.json()["type"].endswith("storage-unavailable")
    assert gw.queue.enqueued == []
    s3_proxy.restore()
    assert gw.client.post("/v1/finetunes", files=files, headers=headers("acme")).status_code == 202
