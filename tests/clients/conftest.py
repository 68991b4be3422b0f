"""The client's tests run against the real embedded server: the gateway app of `fae serve --embedded` (memory job
store, local storage, in-process worker running the tiny model) served by uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

KEYS = {"acme": "acme-client-key-0001", "tuner": "tuner-client-key-0001"}
API_KEYS = f"acme:{KEYS['acme']}:generate+finetune+admin,tuner:{KEYS['tuner']}:finetune"


@dataclass
class LiveServer:
    base_url: str
    data_dir: Path
    key: str = KEYS["acme"]

    def env(self) -> dict[str, str]:
        """What a client process needs: the URL and key, as `FAE_BASE_URL` and `FAE_API_KEY`."""
        return {"FAE_BASE_URL": self.base_url, "FAE_API_KEY": self.key}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model import FAEPipeline

    directory = tmp_path_factory.mktemp("client-models") / "tiny"
    FAEPipeline.from_preset("tiny", seed=0).save_pretrained(str(directory))
    return directory


def serve_embedded(data_dir: Path, model_dir: Path, **overrides: Any) -> Iterator[LiveServer]:
    """`fae serve --embedded` as the CLI builds it (`embedded_settings`, `create_embedded_app`), with these
    settings overrides, on a free port in a thread; yields once `/readyz` answers 200 (the model is warm)."""
    import uvicorn

    from core.settings import Settings
    from fae.embedded import create_embedded_app, embedded_settings

    port = _free_port()
    base = Settings().override(
        data_dir=data_dir,
        models=f"tiny={model_dir}",
        api_keys=API_KEYS,
        port=port,
        log_json=False,
        **overrides,
    )
    settings, _ = embedded_settings(base)
    app = create_embedded_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"client-test-server-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert thread.is_alive(), "the embedded server stopped while starting"
            assert time.monotonic() < deadline, "the embedded server did not become ready"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield LiveServer(url, data_dir)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """One worker thread (jobs run one at a time, so a second job stays queued behind a long one);
    webhooks may reach loopback receivers."""
    yield from serve_embedded(
        tmp_path_factory.mktemp("client-server"),
        tiny_model_dir,
        worker_concurrency=1,
        webhook_allowlist="127.0.0.1",
        webhook_signing_key="client-tests-signing-key",
    )


@pytest.fixture(scope="session")
def limited_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """A server that admits one job per tenant and minute: the second submission answers 429."""
    yield from serve_embedded(
        tmp_path_factory.mktemp("client-limited"), tiny_model_dir, rate_limit_per_minute=1
    )
