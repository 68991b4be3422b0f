"""Worker test helpers: the tiny model (in memory and on disk) and jobs shaped the way the gateway stores them."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.contract import GenerateRequest, Job, JobKind, JobStatus
from core.jobstore import JobStore
from core.jobstore.base import utcnow

MakeJob = Callable[..., Job]


@pytest.fixture(scope="session")
def c2pa_signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A development C2PA signer (chain, key), made once for the session."""
    from core.provenance import ensure_development_signer

    return ensure_development_signer(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(autouse=True)
def _worker_signer(c2pa_signer: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Generate jobs sign their outputs and a worker refuses to run without a signer: every worker test's
    settings (read from the environment) name one, as the chart's Secret does."""
    monkeypatch.setenv("FAE_C2PA_SIGN_CERT", str(c2pa_signer[0]))
    monkeypatch.setenv("FAE_C2PA_PRIVATE_KEY", str(c2pa_signer[1]))


@pytest.fixture(scope="session")
def tiny_pipeline() -> Any:
    from model import FAEPipeline

    return FAEPipeline.from_preset("tiny", seed=0)


@pytest.fixture
def engine(tiny_pipeline: Any) -> Iterator[Any]:
    """An engine serving the tiny model as "tiny" (no acceleration, no hooks), closed after the test."""
    from worker.engine import Engine

    engine = Engine({"tiny": tiny_pipeline})
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_pipeline: Any) -> Path:
    directory = tmp_path_factory.mktemp("models") / "tiny"
    tiny_pipeline.save_pretrained(str(directory))
    return directory


def _generate_job(tenant: str = "acme", webhook_url: str | None = None, **request: Any) -> Job:
    body = GenerateRequest.model_validate({"class_label": 1, "steps": 2, **request})
    return Job(
        id=uuid.uuid4().hex,
        kind=JobKind.generate,
        status=JobStatus.queued,
        tenant=tenant,
        model=body.model,
        request=body.model_dump(mode="json"),
        created_at=utcnow(),
        webhook_url=webhook_url,
    )


@pytest.fixture
def generate_job() -> MakeJob:
    """A queued generate job as the gateway creates it (request validated, dumped to JSON types)."""
    return _generate_job


@pytest.fixture
def submit() -> Callable[[JobStore, Job], Job]:
    """Store a job and put it on the store's queue index, as the gateway does before enqueueing."""

    def store_and_mark(store: JobStore, job: Job) -> Job:
        stored, _ = store.create(job)
        store.mark_enqueued(stored)
        return stored

    return store_and_mark


@dataclass
class WebhookReceiver:
    """A loopback HTTP server that records every POST and answers with the queued status codes (then 204)."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook receiver got {len(self.requests)} of {count} requests")
            time.sleep(0.05)
        return list(self.requests)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = receiver.statuses.pop(0) if receiver.statuses else 204
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fae"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
