"""Webhook secret rotation, on the real Redis store and the memory store: the new secret signs at once, the old
ones beside it until their overlaps end, and a receiver holding any of them verifies the delivery; rotations
at once all count; the memory store with a file (embedded mode) keeps them across a restart."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.contract import WebhookSecretRecord
from core.jobstore import JobStore, MemoryJobStore
from core.settings import LimitsSettings, WebhookSettings
from core.webhooks import (
    MAX_RETIRED_SECRETS,
    rotate_secret,
    secret_for_tenant,
    signatures,
    signing_secrets,
    verify,
)


def test_rotation_signs_with_both_secrets_during_the_overlap(store: JobStore, tmp_path: Path) -> None:
    webhooks = WebhookSettings(rotation_overlap_s=3600)
    derived = secret_for_tenant("acme", webhooks, tmp_path)
    assert signing_secrets("acme", store, webhooks, tmp_path) == [derived]  # never rotated: the derived one
    record = rotate_secret("acme", store, webhooks, tmp_path)
    assert record.retired[0].secret == derived and record.current != derived
    assert signing_secrets("acme", store, webhooks, tmp_path) == [record.current, derived]
    assert signing_secrets("globex", store, webhooks, tmp_path) == [
        secret_for_tenant("globex", webhooks, tmp_path)
    ]
    body, timestamp = b'{"type":"job.succeeded"}', int(datetime.now(UTC).timestamp())
    header = signatures(signing_secrets("acme", store, webhooks, tmp_path), "msg_1", timestamp, body)
    assert len(header.split()) == 2 and all(part.startswith("v1,") for part in header.split())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": header}
    assert verify(record.current, headers, body) and verify(derived, headers, body)
    # A second rotation within the overlap: the original keeps signing until its own overlap ends.
    again = rotate_secret("acme", store, webhooks, tmp_path)
    assert signing_secrets("acme", store, webhooks, tmp_path) == [again.current, record.current, derived]
    assert [r.valid_until for r in again.retired] == sorted(
        (r.valid_until for r in again.retired), reverse=True
    )


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


def test_a_record_stored_with_one_previous_secret_still_reads(store: JobStore, tmp_path: Path) -> None:
    until = datetime.now(UTC) + timedelta(hours=1)
    legacy = {"current": "whsec_bmV3", "previous": "whsec_b2xk", "previous_until": until.isoformat()}
    store.put_webhook_secrets("acme", WebhookSecretRecord.model_validate_json(json.dumps(legacy)))
    assert signing_secrets("acme", store, WebhookSettings(), tmp_path) == ["whsec_bmV3", "whsec_b2xk"]
    rotated = rotate_secret("acme", store, WebhookSettings(rotation_overlap_s=60), tmp_path)
    assert rotated.signing(datetime.now(UTC)) == [rotated.current, "whsec_bmV3", "whsec_b2xk"]


def test_rotations_at_the_same_time_all_count(store: JobStore, tmp_path: Path) -> None:
    webhooks = WebhookSettings(rotation_overlap_s=3600)
    derived = secret_for_tenant("acme", webhooks, tmp_path)
    start = threading.Barrier(MAX_RETIRED_SECRETS)
    answers: list[str] = []

    def rotate() -> None:
        start.wait()
        answers.append(rotate_secret("acme", store, webhooks, tmp_path).current)

    threads = [threading.Thread(target=rotate) for _ in range(MAX_RETIRED_SECRETS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    signing = signing_secrets("acme", store, webhooks, tmp_path)
    # Every secret a rotation answered signs (none lost to another rotation), and so does the original.
    assert sorted(signing[:-1]) == sorted(answers) and signing[-1] == derived
    # One more: the list is capped, the oldest (the original) goes first.
    last = rotate_secret("acme", store, webhooks, tmp_path)
    assert signing_secrets("acme", store, webhooks, tmp_path) == [
        last.current,
        *signing[:MAX_RETIRED_SECRETS],
    ]


def test_the_memory_store_keeps_rotations_in_its_file(tmp_path: Path) -> None:
    """Embedded mode's store: a restart (a new store on the same file) signs with the rotated secrets, not the
    derived one the rotation replaced."""
    webhooks, path = WebhookSettings(rotation_overlap_s=3600), tmp_path / "webhook-secrets.json"
    derived = secret_for_tenant("acme", webhooks, tmp_path)
    first = MemoryJobStore(LimitsSettings(), webhook_secrets_file=path)
    one = rotate_secret("acme", first, webhooks, tmp_path)
    two = rotate_secret("acme", first, webhooks, tmp_path)
    assert oct(path.stat().st_mode)[-3:] == "600"  # secrets: only this user reads the file
    restarted = MemoryJobStore(LimitsSettings(), webhook_secrets_file=path)
    assert signing_secrets("acme", restarted, webhooks, tmp_path) == [two.current, one.current, derived]
    assert restarted.get_webhook_secrets("acme") == first.get_webhook_secrets("acme")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"webhook-secrets\.json"):
        MemoryJobStore(LimitsSettings(), webhook_secrets_file=path)
