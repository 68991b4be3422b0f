"""`generate(image=..., strength=...)` and `embeddings.create(...)` of the client against the real embedded server:
a path or bytes travel as multipart, a storage key as JSON; strength 1 equals plain generation (sync and async)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fae_client import AsyncFAEClient, EmbeddingList, FAEClient, UnprocessableEntityError
from PIL import Image


def png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_generate_from_a_path_bytes_and_a_storage_key(live_server, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(png(1))
    with FAEClient(live_server.base_url, live_server.key) as fae:
        plain = fae.generate(class_label=1, steps=3, seed=5, wait=True)
        same = fae.generate(class_label=1, steps=3, seed=5, image=source, strength=1.0, wait=True)
        assert np.array_equal(pixels(fae.images(plain)[0]), pixels(fae.images(same)[0]))
        varied = fae.generate(class_label=1, steps=3, seed=5, n=2, image=png(2), strength=0.5, wait=True)
        assert varied.status == "succeeded" and len(varied.outputs) == 2
        again = fae.generate(class_label=1, steps=3, image=varied.outputs[0].key, strength=0, wait=True)
        assert again.status == "succeeded" and len(again.outputs) == 1
        with pytest.raises(UnprocessableEntityError, match="PNG, JPEG or WebP"):
            fae.generate(class_label=1, steps=3, image=b"not an image", strength=0.5)


def test_embeddings_sync_and_async(live_server, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(3))
    with FAEClient(live_server.base_url, live_server.key) as fae:
        result = fae.embeddings.create([tmp_path / "a.png", png(4)], kind="encoder")
        assert isinstance(result, EmbeddingList) and len(result.data) == 2
        assert len(result.data[0].embedding) == result.dimensions

    async def run() -> EmbeddingList:
        async with AsyncFAEClient(live_server.base_url, live_server.key) as fae:
            return await fae.embeddings.create([png(3)], kind="latent_tokens")

    tokens = asyncio.run(run())
    assert tokens.kind == "latent_tokens" and len(tokens.data[0].embedding[0]) == tokens.dimensions


def test_the_cli_sends_an_image(live_server, tmp_path: Path) -> None:
    """`fae-client generate --image in.png --strength 0.6` as a user runs it: a separate process."""
    (tmp_path / "in.png").write_bytes(png(7))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FAE_")}, **live_server.env()}
    args = ["generate", "--class-label", "1", "--steps", "3", "--image", "in.png", "--strength", "0.6"]
    made = subprocess.run(
        [sys.executable, "-m", "fae_client.cli", *args, "-o", "out.png"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    assert job["request"]["strength"] == 0.6 and job["request"]["image"].endswith("/inputs/0.png")
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
