"""`verify_webhook` checks what the server signs (core.webhooks.sign), including a real delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fae_client import FAEClient, WebhookEvent, WebhookVerificationError, verify_webhook

from core.webhooks import generate_secret, sign

BODY = json.dumps(
    {"type": "job.succeeded", "timestamp": "2026-12-01T12:00:00+00:00",
     "data": {"id": "j1", "kind": "generate", "status": "succeeded", "outputs": [], "future_field": 1}}
).encode()  # fmt: skip


def signed_headers(secret: str, body: bytes = BODY, at: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    return {
        "Webhook-Id": "msg_j1_succeeded",
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign(secret, "msg_j1_succeeded", timestamp, body),
    }


def test_a_signature_made_by_the_server_verifies() -> None:
    secret = generate_secret()
    event = verify_webhook(signed_headers(secret), BODY, secret)
    assert isinstance(event, WebhookEvent) and event.type == "job.succeeded" and event.data.id == "j1"
    assert event.id == "msg_j1_succeeded" and event.data.done
    assert verify_webhook(signed_headers(secret), BODY.decode(), secret).data.status == "succeeded"


def test_any_of_several_signatures_may_match_during_a_rotation() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signed_headers(old)
    headers["Webhook-Signature"] = (
        f"{signed_headers(new)['Webhook-Signature']} {headers['Webhook-Signature']}"
    )
    assert verify_webhook(headers, BODY, old).data.id == "j1"
    assert verify_webhook(headers, BODY, new).data.id == "j1"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, BODY, generate_secret())


def test_tampered_stale_or_unsigned_deliveries_are_refused() -> None:
    secret = generate_secret()
    with pytest.raises(WebhookVerificationError, match="matches"):
        verify_webhook(signed_headers(secret), BODY.replace(b"succeeded", b"failed"), secret)
    with pytest.raises(WebhookVerificationError, match="away from now"):
        verify_webhook(signed_headers(secret, at=int(time.time()) - 3600), BODY, secret)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook({}, BODY, secret)
    headers = signed_headers(secret)
    headers["Webhook-Signature"] = "v2," + headers["Webhook-Signature"][3:]  # only v1 is understood
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, BODY, secret)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_delivery_verifies_with_the_tenants_secret(live_server, receiver) -> None:
    url, received = receiver
    with FAEClient(live_server.base_url, live_server.key) as fae:
        job = fae.generate(class_label=1, steps=2, webhook_url=url, wait=True)
        secret = fae.webhooks.secret()
    deadline = time.monotonic() + 30
    while not any(json.loads(body)["data"]["id"] == job.id for _, body in received):
        assert time.monotonic() < deadline, "no webhook arrived"
        time.sleep(0.05)
    headers, body = next((h, b) for h, b in received if json.loads(b)["data"]["id"] == job.id)
    event = fae.webhooks.verify(headers, body, secret)  # the same function as `verify_webhook`
    assert event.type == "job.succeeded" and event.data.id == job.id and event.data.succeeded


def test_during_a_rotation_both_secrets_verify_a_real_delivery(live_server, receiver) -> None:
    """Secret rotation (issue 15 item 6): two `v1,` signatures in one header."""
    url, received = receiver
    with FAEClient(live_server.base_url, live_server.key) as fae:
        old = fae.webhooks.secret()
        new = fae.webhooks.rotate()
        assert new != old and fae.webhooks.secret() == new
        job = fae.generate(class_label=1, steps=2, webhook_url=url, wait=True)
    deadline = time.monotonic() + 30
    while not any(json.loads(body)["data"]["id"] == job.id for _, body in received):
        assert time.monotonic() < deadline, "no webhook arrived"
        time.sleep(0.05)
    headers, body = next((h, b) for h, b in received if json.loads(b)["data"]["id"] == job.id)
    assert len(headers["webhook-signature"].split()) == 2
    assert verify_webhook(headers, body, old).data.id == verify_webhook(headers, body, new).data.id == job.id
