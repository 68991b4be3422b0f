"""The gateway on the real parts: Redis job store (real redis-server) and S3 storage (real SeaweedFS)."""

from __future__ import annotations

import json

import httpx
import pytest

from core.jobstore import RedisJobStore

pytestmark = pytest.mark.services


def test_generate_on_redis_and_s3(make_gateway, headers, png, real_parts) -> None:
    store, storage, settings = real_parts
    gw = make_gateway(store=store, storage=storage, complete=True, delay_s=0.2)
    key = {**headers("acme"), "Idempotency-Key": "k1"}
    accepted = gw.client.post("/v1/generate", json={"class_label": 2, "n": 2}, headers=key)
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    # Server-sent events over Redis pub/sub, until the job is done.
    stream = gw.client.get(f"/v1/jobs/{job_id}/events", headers=headers("acme")).text
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    statuses = [event["status"] for event in events if "status" in event]  # status events: the whole job
    assert statuses[-1] == "succeeded" and "running" in statuses
    replay = gw.client.post("/v1/generate", json={"class_label": 2, "n": 2}, headers=key)
    assert replay.status_code == 200 and replay.json()["id"] == job_id
    job = gw.client.get(f"/v1/jobs/{job_id}", headers=headers("acme")).json()
    assert job["status"] == "succeeded" and len(job["outputs"]) == 2
    with httpx.Client(timeout=10) as client:  # presigned S3 URLs, fetched from SeaweedFS itself
        for output in job["outputs"]:
            assert output["url"].startswith(settings.storage.s3_endpoint_url)
            response = client.get(output["url"])
            assert response.status_code == 200 and response.content == png()
        forged = job["outputs"][0]["url"].replace(f"/{job_id}/0.png", f"/{job_id}/1.png")
        assert client.get(forged).status_code == 403
    assert gw.client.get(f"/v1/jobs/{job_id}", headers=headers("globex")).status_code == 404


def test_limits_hold_in_redis_across_gateways(make_gateway, headers, real_parts) -> None:
    store, storage, settings = real_parts
    shared = {"rate_limit_per_minute": 3, "redis_namespace": settings.redis.namespace}
    first = make_gateway(store=store, storage=storage, **shared)
    second = make_gateway(store=RedisJobStore(settings.redis, settings.limits), storage=storage, **shared)
    codes = [
        gateway.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).status_code
        for gateway in (first, second, first, second)
    ]
    assert codes == [202, 202, 202, 429]
