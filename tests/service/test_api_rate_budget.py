"""The per-minute budget counts admitted jobs only, and every answer states it (IETF `RateLimit` headers)."""

from __future__ import annotations

import re

from core.contract import AdapterRecord, adapter_key
from core.jobstore.base import utcnow
from tests.service.test_api_generate import assert_problem

BODY = {"class_label": 1}


def budget(response) -> tuple[int, int]:
    """(remaining, seconds until all is back) from `RateLimit`, after checking `RateLimit-Policy`."""
    assert response.headers["ratelimit-policy"] == '"per-minute";q=2;w=60'
    match = re.fullmatch(r'"per-minute";r=(\d+);t=(\d+)', response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return int(match.group(1)), int(match.group(2))


def test_inflight_refusals_do_not_spend_the_rate_budget(make_gateway, headers) -> None:
    gw = make_gateway(rate_limit_per_minute=2, max_inflight_per_tenant=1)
    first = gw.client.post("/v1/generate", json=BODY, headers=headers("acme"))
    assert first.status_code == 202
    remaining, reset = budget(first)
    assert remaining == 1 and 0 < reset <= 30
    for _ in range(4):  # a client that keeps obeying Retry-After on the in-flight refusal
        refused = gw.client.post("/v1/generate", json=BODY, headers=headers("acme"))
        assert assert_problem(refused, 429)["type"].endswith("inflight-limit")
        assert refused.headers["retry-after"] and budget(refused)[0] == 1
    gw.client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=headers("acme"))
    second = gw.client.post("/v1/generate", json=BODY, headers=headers("acme"))
    assert second.status_code == 202 and budget(second)[0] == 0
    gw.client.post(f"/v1/jobs/{second.json()['id']}/cancel", headers=headers("acme"))
    limited = gw.client.post("/v1/generate", json=BODY, headers=headers("acme"))
    assert assert_problem(limited, 429)["type"].endswith("rate-limited")
    assert budget(limited)[0] == 0 and int(limited.headers["retry-after"]) >= 1


def test_invalid_bodies_do_not_spend_the_rate_budget(make_gateway, headers) -> None:
    gw = make_gateway(rate_limit_per_minute=2)
    for _ in range(3):
        assert_problem(gw.client.post("/v1/generate", json={"prompt": "x"}, headers=headers("acme")), 422)
    assert budget(gw.client.post("/v1/generate", json=BODY, headers=headers("acme")))[0] == 1


def test_a_retry_gets_its_job_even_when_its_body_no_longer_validates(make_gateway, headers) -> None:
    """Idempotent replays come before validation, as they did before admission became one step."""
    gw = make_gateway()
    record = AdapterRecord(
        id="style1", tenant="acme", model="cls", key=adapter_key("acme", "style1"), created_at=utcnow()
    )
    gw.store.put_adapter(record)
    body = {"class_label": 1, "adapter": "style1"}
    key = {**headers("acme"), "Idempotency-Key": "k-9"}
    first = gw.client.post("/v1/generate", json=body, headers=key)
    assert first.status_code == 202
    assert gw.store.delete_adapter("acme", "style1")  # deleted since
    retry = gw.client.post("/v1/generate", json=body, headers=key)
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert_problem(gw.client.post("/v1/generate", json=body, headers=headers("acme")), 422)
    other_body = gw.client.post("/v1/generate", json={**body, "class_label": 2}, headers=key)
    assert assert_problem(other_body, 422)["type"].endswith("idempotency-key-reused")
