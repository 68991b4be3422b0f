"""What one submission costs in Redis, on the real parts: the Redis job store and Celery's Redis transport.

Round trips are counted at the client (every request redis-py writes, sync and asyncio, from the gateway's
job store and Celery alike); commands, including those a Lua script runs, with `MONITOR` on the server.
Counts, never times: the benchmark holds the performance targets.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import redis.asyncio.connection as aio_connection
import redis.connection as sync_connection
from fastapi.testclient import TestClient

from core.contract import Job, JobKind, JobStatus
from core.jobqueue import CeleryJobQueue
from core.jobstore import RedisJobStore
from core.jobstore.base import AdmissionOutcome, utcnow
from core.settings import Settings
from core.storage import LocalStorage
from service.app import create_app
from tests.service.conftest import API_KEYS, auth

BODY = {"class_label": 1}


@dataclass
class Sent:
    """Requests written to Redis by this process (one per round trip: a pipeline is one write)."""

    requests: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests)

    def text(self) -> bytes:
        return b" ".join(self.requests).upper()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    record = Sent()

    def packed(command: Any) -> bytes:
        parts = command if isinstance(command, list | tuple) else [command]
        return b"".join(
            bytes(p) if isinstance(p, bytes | bytearray | memoryview) else p.encode() for p in parts
        )

    original_sync = sync_connection.Connection.send_packed_command
    original_async = aio_connection.Connection.send_packed_command

    def sync_send(self: Any, command: Any, *args: Any, **kwargs: Any) -> None:
        record.requests.append(packed(command))
        original_sync(self, command, *args, **kwargs)

    async def async_send(self: Any, command: Any, *args: Any, **kwargs: Any) -> None:
        record.requests.append(packed(command))
        await original_async(self, command, *args, **kwargs)

    monkeypatch.setattr(sync_connection.Connection, "send_packed_command", sync_send)
    monkeypatch.setattr(aio_connection.Connection, "send_packed_command", async_send)
    return record


@dataclass
class RealGateway:
    client: TestClient
    store: RedisJobStore
    settings: Settings


@pytest.fixture
def gateway(redis_server, tmp_path, model_dirs) -> Iterator[RealGateway]:
    settings = Settings().override(
        redis_namespace=f"test-{uuid.uuid4().hex[:12]}",
        redis_url=redis_server.url(),
        api_keys=API_KEYS,
        models=f"cls={model_dirs['cls']}",
        data_dir=tmp_path / "data",
        max_inflight_per_tenant=100_000,
        max_queue_depth=100_000,
        rate_limit_per_minute=100_000,
    )
    store = RedisJobStore(settings.redis, settings.limits)
    queue = CeleryJobQueue(settings)
    app = create_app(settings, job_store=store, storage=LocalStorage(tmp_path / "files"), job_queue=queue)
    try:
        with TestClient(app) as client:
            yield RealGateway(client, store, settings)
    finally:
        store.flush_namespace()
        store.close()
        redis.Redis.from_url(settings.redis.url).delete("generate")  # Celery's queue of fae.generate


class Monitor:
    """The commands the server runs (clients' and scripts') between `__enter__` and `__exit__`."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._marker = uuid.uuid4().hex
        self.commands: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self._client.monitor() as monitor:
            started = False
            for command in monitor.listen():
                text = command["command"]
                if self._marker in text:
                    if started:
                        return
                    started = True
                    self._ready.set()
                elif started:
                    self.commands.append(command)

    def __enter__(self) -> Monitor:
        self._thread.start()
        while not self._ready.wait(0.05):
            self._client.echo(self._marker)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.echo(self._marker)
        self._thread.join(timeout=10)
        self._client.close()

    def names(self) -> list[str]:
        return [command["command"].split(" ", 1)[0].strip('"').upper() for command in self.commands]


def submit(gateway: RealGateway, tenant: str = "acme") -> dict[str, Any]:
    response = gateway.client.post("/v1/generate", json=BODY, headers=auth(tenant))
    assert response.status_code == 202, response.text
    return response.json()


def test_a_submission_is_at_most_three_round_trips_and_never_subscribes(
    gateway: RealGateway, sent: Sent
) -> None:
    submit(gateway)  # the first one loads the script and declares Celery's queue
    sent.requests.clear()
    job = submit(gateway)
    assert len(sent) <= 3, sent.requests
    assert b"SUBSCRIBE" not in sent.text() and b"EVALSHA" in sent.text() and b"LPUSH" in sent.text()
    assert job["queue_position"] == 1
    sent.requests.clear()
    fetched = gateway.client.get(f"/v1/jobs/{job['id']}", headers=auth("acme"))
    assert fetched.json()["queue_position"] == 1 and fetched.json()["status"] == "queued"
    assert len(sent) == 1, sent.requests  # GET /v1/jobs/{id}: one read


def test_submission_cost_does_not_grow_with_the_backlog(gateway: RealGateway) -> None:
    submit(gateway, "acme")
    submit(gateway, "globex")

    def commands_of_one_submission(tenant: str) -> list[str]:
        with Monitor(gateway.settings.redis.url) as monitor:
            submit(gateway, tenant)
        return monitor.names()

    empty = commands_of_one_submission("acme")

    async def fill(count: int) -> None:
        for _ in range(count):
            job = Job(
                id=uuid.uuid4().hex,
                kind=JobKind.generate,
                status=JobStatus.queued,
                tenant="globex",
                created_at=utcnow(),
            )
            admission = await gateway.store.admit("globex", JobKind.generate, gateway.settings.limits, job)
            assert admission.outcome is AdmissionOutcome.created

    asyncio.run(fill(2000))
    assert gateway.store.inflight_count("globex") == 2001
    backlogged = commands_of_one_submission("globex")
    assert sorted(backlogged) == sorted(empty), (empty, backlogged)
    assert "SMEMBERS" not in empty and "EXISTS" not in empty
