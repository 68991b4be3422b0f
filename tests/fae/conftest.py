"""The real embedded server on a loopback port: uvicorn serving `create_embedded_app` (gateway, in-process worker,
memory job store, local storage) with the tiny text-to-image model, as `fae serve --embedded` runs it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from core.settings import Settings

API_KEY = "acme-key-0123456789"


@dataclass
class EmbeddedServer:
    base_url: str
    settings: Settings
    app: Any

    api_key: str = API_KEY

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, timeout_s: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def t2i_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from model import FAEPipeline

    pipe = FAEPipeline.from_preset("tiny-t2i", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh generator's zero-initialised outputs would ignore the prompt
        for p in pipe.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    directory = tmp_path_factory.mktemp("models") / "tiny-t2i"
    pipe.save_pretrained(str(directory))
    return directory


@pytest.fixture
def embedded_server(tmp_path: Path, t2i_model_dir: Path) -> Iterator[Callable[..., EmbeddedServer]]:
    """Start one with `embedded_server(step_delay_s=..., **settings overrides)` (a step delay slows every
    denoising step, so a test can watch a job run); it is stopped after the test."""
    from fae.embedded import create_embedded_app, embedded_settings
    from worker.engine import EngineHooks, install_test_hooks

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(step_delay_s: float = 0.0, **overrides: Any) -> EmbeddedServer:
        install_test_hooks(EngineHooks(step_delay_s=step_delay_s))
        port = _free_port()
        fields = {
            "data_dir": tmp_path / "var",
            "models": f"tiny-t2i={t2i_model_dir}",
            "api_keys": f"acme:{API_KEY}:generate+finetune+admin",
            **overrides,  # may replace any of the above
            "port": port,
        }
        base = Settings().override(**fields)
        settings, _ = embedded_settings(base)
        app = create_embedded_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return EmbeddedServer(url, settings, app)
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the embedded server did not become ready")

    try:
        yield start
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(30)
        install_test_hooks(EngineHooks())
