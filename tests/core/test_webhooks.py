"""Webhook URL guard, Standard Webhooks signatures (checked by an independent verifier), one delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core import metrics
from core.contract import Job, JobKind, JobOutput, JobStatus
from core.jobstore.base import utcnow
from core.settings import WebhookSettings
from core.webhooks import (
    WebhookURLRefused,
    check_webhook_url,
    deliver,
    generate_secret,
    retry_delay_s,
    secret_for_tenant,
    sign,
    verify,
)


def independent_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks scheme written out from the spec, sharing no code with core.webhooks."""
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass
class Receiver:
    url: str
    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fae?source=test"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def finished_job() -> Job:
    return Job(
        id="job123",
        kind=JobKind.generate,
        status=JobStatus.succeeded,
        tenant="acme",
        created_at=utcnow(),
        finished_at=utcnow(),
        outputs=[JobOutput(index=0, key="tenants/acme/jobs/job123/0.png", url="https://x/0.png", seed=7)],
        seeds=[7],
    )


def test_signature_matches_an_independent_implementation() -> None:
    secret = generate_secret()
    body = b'{"hello":"world"}'
    assert sign(secret, "msg_1", 1700000000, body) == independent_signature(
        secret, "msg_1", "1700000000", body
    )
    # The spec's published example (standard-webhooks/standard-webhooks, spec/standard-webhooks.md).
    spec_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    spec_body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(spec_secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, spec_body) == expected


def test_delivery_reaches_an_allowed_receiver_signed(receiver: Receiver, tmp_path: Path) -> None:
    webhooks = WebhookSettings(allowlist="127.0.0.1")
    secret = secret_for_tenant("acme", webhooks, tmp_path)
    before = metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered")._value.get()
    outcome = deliver(finished_job(), receiver.url, secret, webhooks)
    assert outcome.ok and outcome.status_code == 200 and not outcome.retryable
    ((headers, body),) = receiver.received
    assert headers["webhook-id"] == outcome.webhook_id == "msg_job123_succeeded"
    assert headers["webhook-signature"] == independent_signature(
        secret, headers["webhook-id"], headers["webhook-timestamp"], body
    )
    assert headers["host"] == receiver.url.split("/")[2]
    assert verify(secret, headers, body)
    assert not verify(secret_for_tenant("globex", webhooks, tmp_path), headers, body)
    event = json.loads(body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == "job123" and event["data"]["outputs"][0]["url"] == "https://x/0.png"
    assert metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered")._value.get() == before + 1


def test_delivery_to_loopback_is_refused_without_allowlist(receiver: Receiver) -> None:
    outcome = deliver(finished_job(), receiver.url, generate_secret(), WebhookSettings())
    assert outcome.outcome == "refused" and not outcome.retryable
    assert receiver.received == []


# 127.0.0.1 written the ways a URL can carry it: IPv6 transition forms and the textual IPv4 forms that
# inet_aton (and so the resolver) accepts.
LOOPBACK_IN_DISGUISE = [
    "[2002:7f00:1::]",  # 6to4
    "[2002:7f00:1:0:1234::1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[::ffff:7f00:1]",  # IPv4-mapped, hex
    "[64:ff9b::127.0.0.1]",  # NAT64 well-known
    "[64:ff9b:1::7f00:1]",  # NAT64 local-use
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
    "[2001:0:7f00:1::1]",  # Teredo, server 127.0.0.1
    "127.1",
    "0x7f.1",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "0177.0.0.1",
    "127.000.000.001",
    "127.0.0.1.",
]


def test_loopback_in_any_encoding_is_refused_at_submission_and_delivery(receiver: Receiver) -> None:
    for host in LOOPBACK_IN_DISGUISE:
        url = receiver.url.replace("127.0.0.1", host)
        with pytest.raises(WebhookURLRefused):
            check_webhook_url(url, WebhookSettings())
        assert deliver(finished_job(), url, generate_secret(), WebhookSettings()).outcome == "refused", host
    assert receiver.received == []


def test_an_ipv4_mapped_public_address_passes() -> None:
    # (6to4 of a public address passes where Python's ipaddress counts 2002::/16 as global: 3.11.4 on.)
    assert check_webhook_url("http://[::ffff:8.8.8.8]/", WebhookSettings()).port == 80


def test_receiver_errors_are_retryable_and_410_is_final(receiver: Receiver) -> None:
    webhooks = WebhookSettings(allowlist="127.0.0.0/8")
    receiver.status = 503
    outcome = deliver(finished_job(), receiver.url, generate_secret(), webhooks)
    assert outcome.outcome == "error" and outcome.retryable and outcome.status_code == 503
    receiver.status = 410
    assert deliver(finished_job(), receiver.url, generate_secret(), webhooks).outcome == "rejected"
    receiver.status = 302  # redirects are not followed: they could point inward
    assert deliver(finished_job(), receiver.url, generate_secret(), webhooks).retryable
    assert len(receiver.received) == 3


def test_unreachable_receiver_is_a_retryable_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    webhooks = WebhookSettings(allowlist="127.0.0.1", timeout_s=2)
    outcome = deliver(finished_job(), f"http://127.0.0.1:{port}/", generate_secret(), webhooks)
    assert outcome.outcome == "error" and outcome.retryable


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.4/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "ftp://93.184.216.34/",
        "http://user:pass@93.184.216.34/",
        "http:///nohost",
    ],
)
def test_private_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookURLRefused):
        check_webhook_url(url, WebhookSettings())


def test_public_addresses_pass_and_the_allowlist_admits_internal_ones() -> None:
    target = check_webhook_url("https://93.184.216.34:8443/hook", WebhookSettings())
    assert target.port == 8443 and str(target.addresses[0]) == "93.184.216.34"
    assert check_webhook_url("http://[2606:4700::1111]/", WebhookSettings()).port == 80
    webhooks = WebhookSettings(allowlist="10.0.0.0/8, localhost")
    check_webhook_url("http://10.1.2.3/", webhooks)
    check_webhook_url("http://localhost:9000/", webhooks)
    with pytest.raises(WebhookURLRefused):
        check_webhook_url("http://192.168.0.10/", webhooks)


def test_tenant_secrets_configured_derived_and_persisted(tmp_path: Path) -> None:
    configured = generate_secret()
    webhooks = WebhookSettings(secrets=f"acme:{configured}", signing_key="operator-key")
    assert secret_for_tenant("acme", webhooks, tmp_path) == configured
    derived = secret_for_tenant("globex", webhooks, tmp_path)
    assert derived.startswith("whsec_") and derived == secret_for_tenant("globex", webhooks, tmp_path)
    assert derived != secret_for_tenant("initech", webhooks, tmp_path)
    assert len(base64.b64decode(derived[6:])) == 32
    # Without an operator key: a random key persisted in data_dir, the same for every process using it.
    first = secret_for_tenant("acme", WebhookSettings(), tmp_path / "a")
    assert first == secret_for_tenant("acme", WebhookSettings(), tmp_path / "a")
    assert first != secret_for_tenant("acme", WebhookSettings(), tmp_path / "b")
    assert (tmp_path / "a" / "webhook-signing-key").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        secret_for_tenant("acme", WebhookSettings(secrets="no-colon"), tmp_path)


def test_retry_delays_grow_and_are_capped() -> None:
    delays = [retry_delay_s(attempt) for attempt in range(1, 10)]
    assert 4.0 <= delays[0] <= 6.0
    assert delays[2] > delays[0]
    assert max(delays) <= 3600 * 1.2
