"""Gateway test kit: model folders (JSON only), a fake queue that can complete jobs, and an app factory."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.contract import Job, JobOutput, JobStatus, output_key
from core.jobqueue import JobQueue
from core.jobstore import InvalidTransition, JobStore, MemoryJobStore, RedisJobStore
from core.settings import Settings
from core.storage import LocalStorage, S3Storage, Storage
from service.app import create_app

KEYS = {
    "acme": "acme-key-0001",
    "globex": "globex-key-0001",
    "tuner": "tuner-key-0001",  # finetune scope only
    "root": "root-key-0001",  # admin scope only
}
API_KEYS = "acme:acme-key-0001,globex:globex-key-0001,tuner:tuner-key-0001:finetune,root:root-key-0001:admin"


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_model(root: Path, generator: dict[str, Any]) -> Path:
    (root / "generator").mkdir(parents=True)
    (root / "pixel_decoder").mkdir()
    index = {"_class_name": "FAEPipeline", "generator": ["model.x", generator["_class_name"]]}
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "generator" / "config.json").write_text(json.dumps(generator))
    (root / "pixel_decoder" / "config.json").write_text(json.dumps({"grid_size": 8, "patch_size": 4}))
    return root


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "cls": write_model(root / "cls", {"_class_name": "LightningDiT", "num_classes": 10}),
        "txt": write_model(root / "txt", {"_class_name": "MMDiT", "text_dim": 32}),
    }


@dataclass
class FakeQueue(JobQueue):
    """Records what the gateway enqueues; with `complete=True` a thread plays the worker's part."""

    store: JobStore | None = None
    storage: Storage | None = None
    complete: bool = False
    delay_s: float = 0.0
    fail: bool = False
    enqueued: list[Job] = field(default_factory=list)
    terminal: list[Job] = field(default_factory=list)
    started: bool = False

    def enqueue(self, job: Job) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.enqueued.append(job)
        if self.complete:
            threading.Thread(target=self._run, args=(job.id,), daemon=True).start()

    def _run(self, job_id: str) -> None:
        assert self.store is not None and self.storage is not None
        time.sleep(self.delay_s)
        try:
            job = self.store.transition(job_id, JobStatus.running)
        except InvalidTransition:
            return
        steps = 3
        for step in range(1, steps + 1):
            if self.store.cancel_requested(job_id):
                self.store.transition(job_id, JobStatus.canceled)
                return
            self.store.set_progress(job_id, step, steps, eta_s=(steps - step) * 0.01)
            time.sleep(self.delay_s / steps)
        n = job.request.get("n", 1)
        outputs = []
        fmt = job.request.get("output_format", "png")
        content_type = f"image/{fmt}"  # as the worker labels it (the bytes stay a PNG: the fake draws none)
        for index in range(n):
            key = output_key(job.tenant, job.id, index, fmt)
            self.storage.put_bytes(key, png_bytes(), content_type)
            outputs.append(JobOutput(index=index, key=key, seed=index + 1, content_type=content_type))
        self.store.transition(
            job_id,
            JobStatus.succeeded,
            outputs=outputs,
            seeds=[o.seed for o in outputs],
            timings={"total": 0.01},
        )

    def notify_terminal(self, job: Job) -> None:
        self.terminal.append(job)

    def depth(self, queue_name: str) -> int:
        return 0

    def ping(self) -> bool:
        return True

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False


@dataclass
class Gateway:
    client: TestClient
    store: JobStore
    storage: Storage
    queue: FakeQueue
    settings: Settings


MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway(tmp_path: Path, model_dirs: dict[str, Path]) -> Iterator[MakeGateway]:
    """Build a gateway (memory store, local storage, fake queue unless given) and enter its lifespan."""
    clients: list[TestClient] = []

    def make(
        store: JobStore | None = None,
        storage: Storage | None = None,
        complete: bool = False,
        delay_s: float = 0.0,
        raise_server_exceptions: bool = True,
        **overrides: Any,
    ) -> Gateway:
        fields: dict[str, Any] = {
            "api_keys": API_KEYS,
            "models": f"cls={model_dirs['cls']},txt={model_dirs['txt']}",
            "data_dir": tmp_path / "data",
            "webhook_signing_key": "test-signing-key",
        }
        fields.update(overrides)
        settings = Settings().override(**fields)
        store = store or MemoryJobStore(settings.limits)
        storage = storage or LocalStorage(tmp_path / "files")
        queue = FakeQueue(store=store, storage=storage, complete=complete, delay_s=delay_s)
        app = create_app(settings, job_store=store, storage=storage, job_queue=queue)
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        clients.append(client)
        return Gateway(client, store, storage, queue, settings)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def headers() -> Callable[[str], dict[str, str]]:
    """`headers("acme")`: the Authorization header of a test tenant."""
    return auth


@pytest.fixture
def png() -> Callable[..., bytes]:
    return png_bytes


@pytest.fixture
def real_parts(redis_server, s3_server, s3_bucket) -> Iterator[tuple[RedisJobStore, S3Storage, Settings]]:
    """The gateway's production parts on the real servers: a Redis job store in a fresh namespace, S3 storage."""
    settings = Settings().override(
        redis_namespace=f"test-{uuid.uuid4().hex[:12]}",
        redis_url=redis_server.url(),
        **s3_server.settings_fields(s3_bucket),
    )
    store = RedisJobStore(settings.redis, settings.limits)
    try:
        yield store, S3Storage(settings.storage), settings
    finally:
        store.flush_namespace()
        store.close()
