"""Hostile JSON at the edge (issue 14): deep nesting and non-finite numbers in free-form fields are refused
with a 422 problem, and nothing the store holds is a record its reader would refuse (real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from core.contract import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, Job, JobKind, JobStatus
from core.jobstore import RedisJobStore
from core.jobstore.base import utcnow
from core.settings import Settings

PROBLEM = "application/problem+json"


def nested(depth: int) -> str:
    """`depth` objects inside each other, as JSON text."""
    return '{"a":' * depth + "1" + "}" * depth


def assert_422(response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert field in response.json()["detail"]


@pytest.fixture
def redis_store(redis_server) -> Iterator[RedisJobStore]:
    settings = Settings().override(
        redis_namespace=f"test-{uuid.uuid4().hex[:12]}", redis_url=redis_server.url()
    )
    store = RedisJobStore(settings.redis, settings.limits)
    try:
        yield store
    finally:
        store.flush_namespace()
        store.close()


@pytest.mark.services
def test_deep_metadata_never_locks_a_tenant_out(make_gateway, headers, redis_store) -> None:
    gw = make_gateway(store=redis_store, max_inflight_per_tenant=4, raise_server_exceptions=False)
    json_headers = {**headers("acme"), "Content-Type": "application/json"}
    for depth in (MAX_METADATA_DEPTH + 1, 150, 199, 260):
        body = '{"class_label": 1, "metadata": ' + nested(depth) + "}"
        assert_422(gw.client.post("/v1/generate", content=body, headers=json_headers), "metadata")
    too_deep_to_parse = '{"class_label": 1, "metadata": ' + nested(5000) + "}"
    refused = gw.client.post("/v1/generate", content=too_deep_to_parse, headers=json_headers)
    assert refused.status_code == 400 and "nested too deeply" in refused.json()["detail"]
    # Nothing was stored or holds an in-flight slot: the list reads, and new jobs are admitted.
    listing = gw.client.get("/v1/jobs", headers=headers("acme"))
    assert listing.status_code == 200 and listing.json()["data"] == []
    deepest = gw.client.post(
        "/v1/generate",
        content='{"class_label": 1, "metadata": ' + nested(MAX_METADATA_DEPTH - 1) + "}",
        headers=json_headers,
    )
    assert deepest.status_code == 202, deepest.text
    stored = redis_store.get(deepest.json()["id"])
    assert stored is not None and stored.metadata == deepest.json()["metadata"]
    assert gw.client.get("/v1/jobs", headers=headers("acme")).status_code == 200


def test_deep_json_on_finetunes_is_a_422_or_400(make_gateway, headers, png) -> None:
    gw = make_gateway(raise_server_exceptions=False)
    json_headers = {**headers("tuner"), "Content-Type": "application/json"}
    body = '{"s3_prefix": "tenants/tuner/x/", "metadata": ' + nested(300) + "}"
    assert_422(gw.client.post("/v1/finetunes", content=body, headers=json_headers), "metadata")
    unparsable = '{"s3_prefix": "tenants/tuner/x/", "metadata": ' + nested(20_000) + "}"
    refused = gw.client.post("/v1/finetunes", content=unparsable, headers=json_headers)
    assert refused.status_code == 400 and "nested too deeply" in refused.json()["detail"]  # as on generate
    form = gw.client.post(
        "/v1/finetunes",
        files=[("files", ("a.png", png(), "image/png"))],
        data={"metadata": nested(20_000)},
        headers=headers("tuner"),
    )
    assert_422(form, "metadata")
    big = '{"s3_prefix": "tenants/tuner/x/", "metadata": {"x": "' + "y" * MAX_METADATA_BYTES + '"}}'
    assert_422(gw.client.post("/v1/finetunes", content=big, headers=json_headers), "metadata")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_metadata_are_refused(make_gateway, headers, png, number) -> None:
    gw = make_gateway()
    body = '{"class_label": 1, "metadata": {"price": [1, ' + number + "]}}"
    json_headers = {**headers("acme"), "Content-Type": "application/json"}
    assert_422(gw.client.post("/v1/generate", content=body, headers=json_headers), "finite")
    form = gw.client.post(
        "/v1/finetunes",
        files=[("files", ("a.png", png(), "image/png"))],
        data={"metadata": '{"score": ' + number + "}"},
        headers=headers("tuner"),
    )
    assert_422(form, "finite")
    assert gw.queue.enqueued == []


def test_a_job_the_reader_would_refuse_cannot_be_built() -> None:
    """The bound lives on the Job itself, so every write path runs the check its read path runs."""
    deep: dict = {}
    cursor = deep
    for _ in range(MAX_METADATA_DEPTH):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(ValidationError, match="nests deeper"):
        Job(
            id="j",
            kind=JobKind.generate,
            status=JobStatus.queued,
            tenant="t",
            created_at=utcnow(),
            metadata=deep,
        )
    with pytest.raises(ValidationError, match="finite"):
        Job(
            id="j",
            kind=JobKind.generate,
            status=JobStatus.queued,
            tenant="t",
            created_at=utcnow(),
            request={"metadata": {"x": float("nan")}},
        )


def test_a_stored_record_is_read_without_checking_its_free_json_again() -> None:
    """Reading a record back (every poll, every listed job) skips the free-JSON check its build ran; everything
    else is still checked, and a record from anywhere but the store gets the check as before."""
    job = Job(id="j", kind=JobKind.generate, status=JobStatus.queued, tenant="t", created_at=utcnow())
    record = job.model_dump_json().replace(
        '"metadata":{}', '"metadata":{"x":"' + "y" * MAX_METADATA_BYTES + '"}'
    )
    assert len(Job.from_record(record).metadata["x"]) == MAX_METADATA_BYTES
    with pytest.raises(ValidationError, match="bytes of JSON"):
        Job.model_validate_json(record)
    with pytest.raises(ValidationError, match="status"):
        Job.from_record(record.replace('"status":"queued"', '"status":"lost"'))


def test_a_6to4_webhook_to_loopback_is_refused_at_submission(make_gateway, headers) -> None:
    gw = make_gateway()
    body = {"class_label": 1, "webhook_url": "http://[2002:7f00:1::]:8080/hook"}
    assert_422(gw.client.post("/v1/generate", json=body, headers=headers("acme")), "webhook_url")
