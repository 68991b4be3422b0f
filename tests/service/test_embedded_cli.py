"""The README's first command: `fae serve --embedded` on a fresh data dir serves a generate request end to end
(no Redis, no S3), with the development key it creates and prints."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fae_serve_embedded_generates_an_image(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}
    env |= {"FAE_DATA_DIR": str(tmp_path / "var"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "fae.cli", "serve", "--embedded", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        key_file = tmp_path / "var" / "dev-api-key"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if key_file.is_file() and httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the embedded server did not become ready: " + (tmp_path / "serve.log").read_text())
        key = key_file.read_text().strip()
        assert key in (tmp_path / "serve.log").read_text()  # printed for the user
        headers = {"Authorization": f"Bearer {key}"}
        (model,) = httpx.get(f"{base}/v1/models", headers=headers, timeout=10).json()["data"][:1]
        body = {"prompt": "red apple"} if model["condition_type"] == "text" else {"class_label": 1}
        response = httpx.post(
            f"{base}/v1/generate",
            json={**body, "steps": 4, "seed": 3},
            headers={**headers, "Prefer": "wait=60"},
            timeout=90,
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded" and job["outputs"][0]["seed"] == 3
        image = httpx.get(job["outputs"][0]["url"], timeout=10)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        # the printed one-liner: Accept: image/png answers 303 to the image, which -L follows
        assert "curl -sL -o" in (tmp_path / "serve.log").read_text()
        direct = httpx.post(
            f"{base}/v1/generate",
            json={**body, "steps": 4, "seed": 3},
            headers={**headers, "Prefer": "wait=60", "Accept": "image/png"},
            timeout=90,
            follow_redirects=True,
        )
        assert direct.status_code == 200
        # Same seed, same image: the same pixels (the files differ: each one's Content Credentials name its job).
        assert pixels(direct.content) == pixels(image.content)
        assert httpx.post(f"{base}/v1/generate", json=body, timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
