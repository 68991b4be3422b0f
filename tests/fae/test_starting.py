"""Embedded start-up: the port answers `/healthz` while the app (and the model stack) is still being built."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fae.starting import StartingApp


def built_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("stopped")

    app = FastAPI(lifespan=lifespan)
    app.get("/healthz")(lambda: {"status": "ok"})
    app.get("/readyz")(lambda: {"status": "ready"})
    return app


def test_healthz_answers_while_the_app_builds_then_the_app_serves() -> None:
    release, events = threading.Event(), []

    def build() -> FastAPI:
        release.wait(10)
        return built_app(events)

    with TestClient(StartingApp(build)) as client:
        assert client.get("/healthz").json() == {"status": "starting"}
        early = client.get("/readyz")
        assert early.status_code == 503 and early.headers["retry-after"] == "2"
        assert early.headers["content-type"] == "application/problem+json"
        assert early.json()["type"].endswith("starting")
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/healthz").json() != {"status": "ok"}:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/readyz").json() == {"status": "ready"} and events == ["started"]
    assert events == ["started", "stopped"]


def test_a_failed_build_fails_the_liveness_probe() -> None:
    def build() -> FastAPI:
        raise RuntimeError("no model")

    with TestClient(StartingApp(build)) as client:
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code != 500:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get("/readyz").status_code == 500


def test_serving_the_starting_app_imports_neither_the_gateway_nor_the_model_stack() -> None:
    code = (
        "import sys; import fae.cli, fae.starting, service.server; "
        "print(sorted(m for m in ('torch', 'model', 'service.app', 'fae.embedded', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_embedded_mode_refuses_several_processes(capsys) -> None:
    from fae.cli import main

    assert main(["serve", "--embedded", "--workers", "2"]) == 2
    assert "embedded mode keeps its jobs in memory" in capsys.readouterr().err
