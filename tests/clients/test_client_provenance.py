"""`provenance.verify` of the client against the real embedded server: a generated image's credentials are valid
and name its job, a changed byte makes them tampered, a plain image has none (sync and async)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from fae_client import AsyncFAEClient, FAEClient, ProvenanceVerification
from PIL import Image


def test_verify_a_generated_image_by_path_and_bytes(live_server, tmp_path: Path) -> None:
    with FAEClient(live_server.base_url, live_server.key) as fae:
        job = fae.generate(class_label=1, steps=2, output_format="jpeg", wait=True)
        data = fae.images(job)[0]
        (tmp_path / "out.jpg").write_bytes(data)
        result = fae.provenance.verify(tmp_path / "out.jpg")
        assert isinstance(result, ProvenanceVerification)
        assert result.credentials.status == "valid" and result.job_id == job.id
        assert result.credentials.digital_source_type.endswith("/trainedAlgorithmicMedia")
        changed = bytearray(data)
        changed[data.rindex(b"\xff\xda") + 40] ^= 0x10  # one byte of the entropy-coded pixels
        assert fae.provenance.verify(bytes(changed)).credentials.status == "tampered"
        plain = io.BytesIO()
        Image.open(io.BytesIO(data)).save(plain, format="PNG")  # re-encoded: the credentials are gone
        assert fae.provenance.verify(plain.getvalue()).credentials.status == "none"


def test_the_async_client_verifies_too(live_server) -> None:
    async def run() -> ProvenanceVerification:
        async with AsyncFAEClient(live_server.base_url, live_server.key) as fae:
            job = await fae.generate(class_label=1, steps=2, wait=True)
            return await fae.provenance.verify((await fae.images(job))[0])

    assert asyncio.run(run()).credentials.status == "valid"
