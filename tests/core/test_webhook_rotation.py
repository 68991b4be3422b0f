"""Webhook secret rotation, on the real Redis store and the memory store: the new secret signs at once, the old
one beside it until the overlap ends, and a receiver holding either secret verifies the delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.contract import WebhookSecretRecord
from core.jobstore import JobStore
from core.settings import WebhookSettings
from core.webhooks import rotate_secret, secret_for_tenant, signatures, signing_secrets, verify


def test_rotation_signs_with_both_secrets_during_the_overlap(store: JobStore, tmp_path: Path) -> None:
    webhooks = WebhookSettings(rotation_overlap_s=3600)
    derived = secret_for_tenant("acme", webhooks, tmp_path)
    assert signing_secrets("acme", store, webhooks, tmp_path) == [derived]  # never rotated: the derived one
    record = rotate_secret("acme", store, webhooks, tmp_path)
    assert record.previous == derived and record.current != derived
    assert signing_secrets("acme", store, webhooks, tmp_path) == [record.current, derived]
    assert signing_secrets("globex", store, webhooks, tmp_path) == [
        secret_for_tenant("globex", webhooks, tmp_path)
    ]
    body, timestamp = b'{"type":"job.succeeded"}', int(datetime.now(UTC).timestamp())
    header = signatures(signing_secrets("acme", store, webhooks, tmp_path), "msg_1", timestamp, body)
    assert len(header.split()) == 2 and all(part.startswith("v1,") for part in header.split())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": header}
    assert verify(record.current, headers, body) and verify(derived, headers, body)
    again = rotate_secret("acme", store, webhooks, tmp_path)  # a second rotation retires the first secret
    assert signing_secrets("acme", store, webhooks, tmp_path) == [again.current, record.current]


def test_after_the_overlap_only_the_new_secret_signs(store: JobStore, tmp_path: Path) -> None:
    webhooks = WebhookSettings()
    ended = WebhookSecretRecord(
        current="whsec_bmV3", previous="whsec_b2xk", previous_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    store.put_webhook_secrets("acme", ended)
    assert store.get_webhook_secrets("acme") == ended
    assert signing_secrets("acme", store, webhooks, tmp_path) == ["whsec_bmV3"]
    instant = rotate_secret("acme", store, WebhookSettings(rotation_overlap_s=0), tmp_path)
    assert signing_secrets("acme", store, webhooks, tmp_path) == [instant.current]
