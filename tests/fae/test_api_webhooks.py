"""Webhooks from the real embedded server to a loopback receiver: `job.started`, throttled `job.progress` and
the terminal event, chosen per job with `webhook_events`; a payload without the webhook URL or worker id; and
a secret rotation during which each delivery carries both signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Receiver:
    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def events(self, job_id: str) -> list[tuple[dict[str, str], dict[str, Any], bytes]]:
        out = []
        for headers, body in list(self.received):
            payload = json.loads(body)
            if payload["data"]["id"] == job_id:
                out.append((headers, payload, body))
        return out

    def wait_for_type(self, job_id: str, event: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(p["type"] == event for _, p, _ in self.events(job_id)):
            assert time.monotonic() < deadline, f"no {event} webhook for {job_id}: {self.received}"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fae"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The Standard Webhooks scheme written out from the spec, sharing no code with core.webhooks."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


SERVER_SETTINGS: dict[str, Any] = {
    "step_delay_s": 0.2,
    "progress_interval_s": 0.05,
    "webhook_allowlist": "127.0.0.1",
    "webhook_progress_interval_s": 0.3,
}


@pytest.fixture
def server(embedded_server: Any) -> Any:
    return embedded_server(**SERVER_SETTINGS)


def submit(server: Any, receiver: Receiver, steps: int = 3, **body: Any) -> str:
    with server.client() as client:
        response = client.post(
            "/v1/generate",
            json={"prompt": "red apple", "steps": steps, "webhook_url": receiver.url, **body},
        )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_started_progress_and_terminal_events_as_the_job_asked(server: Any, receiver: Receiver) -> None:
    job_id = submit(
        server, receiver, steps=8, webhook_events=["job.started", "job.progress", "job.succeeded"]
    )
    receiver.wait_for_type(job_id, "job.succeeded")
    with server.client() as client:
        secret = client.get("/v1/webhooks/secret").json()["secret"]
    events = receiver.events(job_id)
    types = [p["type"] for _, p, _ in events]
    assert types[0] == "job.started" and types[-1] == "job.succeeded"
    progress = [p for _, p, _ in events if p["type"] == "job.progress"]
    # 8 steps of 0.2 s, at most one progress webhook every 0.3 s: some, but fewer than the steps
    assert 1 <= len(progress) < 8
    assert all(p["data"]["status"] == "running" and p["data"]["progress"]["step"] > 0 for p in progress)
    for headers, payload, body in events:
        assert headers["webhook-signature"] == signature(secret, headers, body)  # one secret: one signature
        assert payload["id"] == headers["webhook-id"] and set(payload) == {"type", "id", "timestamp", "data"}
        assert receiver.url.encode() not in body and b"worker_id" not in body and b"webhook_url" not in body
    assert len({h["webhook-id"] for h, _, _ in events}) == len(events)
    assert events[0][1]["data"]["status"] == "running"


def test_by_default_only_the_terminal_event_is_sent(server: Any, receiver: Receiver) -> None:
    job_id = submit(server, receiver)
    receiver.wait_for_type(job_id, "job.succeeded")
    time.sleep(0.5)  # anything else would have been sent by now
    assert [p["type"] for _, p, _ in receiver.events(job_id)] == ["job.succeeded"]
    only_started = submit(server, receiver, webhook_events=["job.started"])
    receiver.wait_for_type(only_started, "job.started")
    with server.client() as client:
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{only_started}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    time.sleep(0.5)
    assert [p["type"] for _, p, _ in receiver.events(only_started)] == ["job.started"]
    with server.client() as client:
        refused = client.post("/v1/generate", json={"prompt": "x", "webhook_events": ["job.done"]})
    assert refused.status_code == 422


def test_a_rotation_signs_with_the_new_and_the_old_secret(server: Any, receiver: Receiver) -> None:
    with server.client() as client:
        old = client.get("/v1/webhooks/secret").json()
        rotated = client.post("/v1/webhooks/secret/rotate").json()
        shown = client.get("/v1/webhooks/secret").json()
    assert old["previous_valid_until"] is None
    assert rotated["secret"] != old["secret"] and rotated["previous_valid_until"]
    assert shown == rotated
    job_id = submit(server, receiver)
    receiver.wait_for_type(job_id, "job.succeeded")
    ((headers, _, body),) = receiver.events(job_id)
    offered = headers["webhook-signature"].split(" ")
    assert offered == [signature(rotated["secret"], headers, body), signature(old["secret"], headers, body)]


def test_rotations_survive_a_restart(embedded_server: Any, receiver: Receiver) -> None:
    """Two rotations, then a new embedded server on the same data directory: it shows the last secret and signs
    with it and both older ones, not with the derived secret the first rotation replaced."""
    first = embedded_server(**SERVER_SETTINGS)
    with first.client() as client:
        original = client.get("/v1/webhooks/secret").json()["secret"]
        one = client.post("/v1/webhooks/secret/rotate").json()
        two = client.post("/v1/webhooks/secret/rotate").json()
    restarted = embedded_server(**SERVER_SETTINGS)  # same data directory, fresh memory store
    with restarted.client() as client:
        assert client.get("/v1/webhooks/secret").json() == two
    job_id = submit(restarted, receiver)
    receiver.wait_for_type(job_id, "job.succeeded")
    ((headers, _, body),) = receiver.events(job_id)
    assert headers["webhook-signature"].split(" ") == [
        signature(secret, headers, body) for secret in (two["secret"], one["secret"], original)
    ]
