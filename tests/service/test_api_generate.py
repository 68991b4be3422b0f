"""POST /v1/generate: sync and async paths, idempotency, validation, limits, failures as problem JSON."""

from __future__ import annotations

import json

import pytest

from core.contract import AdapterRecord, JobStatus, adapter_key
from core.jobstore import MemoryJobStore
from core.jobstore.base import Admission, utcnow

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_prefer_wait_returns_the_finished_job(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    response = gw.client.post(
        "/v1/generate",
        json={"class_label": 3, "n": 2, "seed": 5},
        headers={**headers("acme"), "Prefer": "wait=10"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=10"
    job = response.json()
    assert job["status"] == "succeeded" and job["model"] == "cls"
    assert [o["seed"] for o in job["outputs"]] == job["seeds"] == [1, 2]
    assert all(o["url"].startswith("http://testserver/v1/files/") and o["expires_at"] for o in job["outputs"])
    assert job["request"]["class_label"] == 3 and job["request"]["seed"] == 5


def test_accept_image_png_with_wait_redirects_to_the_image(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    wanted = {**headers("acme"), "Prefer": "wait=10", "Accept": "image/png, application/json;q=0.5"}
    response = gw.client.post("/v1/generate", json={"class_label": 3}, headers=wanted, follow_redirects=False)
    assert response.status_code == 303, response.text
    job = response.json()
    assert response.headers["location"] == job["outputs"][0]["url"]
    assert response.headers["content-location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["vary"] == "Accept"
    # JSON preferred (by order or by q), image refused (q=0), a JPEG asked for: the usual 200
    for accept in ("application/json, image/png", "image/png;q=0.4, application/json", "image/png;q=0, */*"):
        answer = gw.client.post("/v1/generate", json={"class_label": 3}, headers={**wanted, "Accept": accept})
        assert answer.status_code == 200, accept
    jpeg = gw.client.post(
        "/v1/generate",
        json={"class_label": 3, "output_format": "jpeg"},
        headers=wanted,
        follow_redirects=False,
    )
    assert jpeg.status_code == 200
    image_any = {**wanted, "Accept": "image/*"}
    assert (
        gw.client.post(
            "/v1/generate",
            json={"class_label": 3, "output_format": "jpeg"},
            headers=image_any,
            follow_redirects=False,
        ).status_code
        == 303
    )
    no_wait = {**headers("acme"), "Accept": "image/png"}
    assert gw.client.post("/v1/generate", json={"class_label": 3}, headers=no_wait).status_code == 202


def test_without_wait_answers_202_with_location(make_gateway, headers) -> None:
    gw = make_gateway()
    response = gw.client.post(
        "/v1/generate", json={"prompt": "a red fox", "model": "txt"}, headers=headers("acme")
    )
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert [j.id for j in gw.queue.enqueued] == [job["id"]]
    polled = gw.client.get(response.headers["location"], headers=headers("acme"))
    assert polled.status_code == 200 and polled.json()["id"] == job["id"]


def test_wait_that_runs_out_answers_202(make_gateway, headers) -> None:
    gw = make_gateway(max_wait_s=0.2)
    response = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=30"}
    )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0.2"  # capped by FAE_MAX_WAIT_S
    assert response.json()["status"] == "queued"


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(make_gateway, headers) -> None:
    gw = make_gateway()
    key = {**headers("acme"), "Idempotency-Key": "order-42"}
    first = gw.client.post("/v1/generate", json={"class_label": 1, "n": 2}, headers=key)
    # Same body, other key order and spacing: still the same request.
    again = gw.client.post(
        "/v1/generate",
        content=json.dumps({"n": 2, "class_label": 1}, indent=2),
        headers={**key, "Content-Type": "application/json"},
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert len(gw.queue.enqueued) == 1
    conflict = gw.client.post("/v1/generate", json={"class_label": 2}, headers=key)
    assert assert_problem(conflict, 422)["type"].endswith("idempotency-key-reused")
    other_tenant = gw.client.post(
        "/v1/generate", json={"class_label": 2}, headers={**headers("globex"), "Idempotency-Key": "order-42"}
    )
    assert other_tenant.status_code == 202 and other_tenant.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"class_label": "three"}, "class_label"),
        ({"class_label": 1, "n": 9}, "n"),
        ({"class_label": 1, "steps": 0}, "steps"),
        ({"class_label": 1, "guidance_scale": -1}, "guidance_scale"),
        ({"class_label": 1, "sampler": "ddim"}, "sampler"),
        ({"class_label": 1, "output_format": "gif"}, "output_format"),
        ({"class_label": 1, "unknown_field": True}, "unknown_field"),
        ({"class_label": 1, "webhook_url": "not a url"}, "webhook_url"),
        ({"class_label": 1, "prompt": "both"}, None),
    ],
)
def test_schema_errors_are_422_problems_with_field_errors(make_gateway, headers, body, field) -> None:
    gw = make_gateway()
    problem = assert_problem(gw.client.post("/v1/generate", json=body, headers=headers("acme")), 422)
    assert problem["errors"]
    if field:
        assert any(field in error["loc"] for error in problem["errors"])
    assert gw.queue.enqueued == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"class_label": 10}, "class_label", "out of range"),
        ({"prompt": "a cat"}, "prompt", "class-conditional"),
        ({}, "class_label", "needs a class_label"),
        ({"model": "txt", "class_label": 1}, "class_label", "prompt"),
        ({"model": "txt"}, "prompt", "needs a prompt"),
        ({"model": "nope", "class_label": 1}, "model", "unknown model"),
        ({"class_label": 1, "adapter": "missing"}, "adapter", "no adapter"),
        ({"class_label": 1, "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", "loopback"),
        ({"class_label": 1, "webhook_url": "http://169.254.169.254/"}, "webhook_url", "link-local"),
    ],
)
def test_model_aware_errors_are_422(make_gateway, headers, body, field, words) -> None:
    gw = make_gateway()
    problem = assert_problem(gw.client.post("/v1/generate", json=body, headers=headers("acme")), 422)
    assert problem["errors"][0]["loc"] == ["body", field]
    assert words in problem["detail"]
    assert gw.queue.enqueued == []


def test_adapters_are_checked_per_tenant_and_model(make_gateway, headers) -> None:
    gw = make_gateway()
    for adapter_id, model in (("style1", "cls"), ("style2", "txt")):
        gw.store.put_adapter(
            AdapterRecord(
                id=adapter_id,
                tenant="acme",
                model=model,
                key=adapter_key("acme", adapter_id),
                created_at=utcnow(),
            )
        )
    ok = gw.client.post("/v1/generate", json={"class_label": 1, "adapter": "style1"}, headers=headers("acme"))
    assert ok.status_code == 202
    stolen = gw.client.post(
        "/v1/generate", json={"class_label": 1, "adapter": "style1"}, headers=headers("globex")
    )
    assert "no adapter" in assert_problem(stolen, 422)["detail"]
    wrong_model = gw.client.post(
        "/v1/generate", json={"class_label": 1, "adapter": "style2"}, headers=headers("acme")
    )
    assert "trained for model 'txt'" in assert_problem(wrong_model, 422)["detail"]


def test_allowlisted_webhook_is_accepted(make_gateway, headers) -> None:
    gw = make_gateway(webhook_allowlist="127.0.0.1")
    body = {"class_label": 1, "webhook_url": "http://127.0.0.1:9000/hook"}
    response = gw.client.post("/v1/generate", json=body, headers=headers("acme"))
    assert response.status_code == 202
    assert response.json()["webhook_url"] == "http://127.0.0.1:9000/hook"


def test_rate_limit_answers_429_with_retry_after(make_gateway, headers) -> None:
    gw = make_gateway(rate_limit_per_minute=2)
    codes = [
        gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).status_code
        for _ in range(2)
    ]
    assert codes == [202, 202]
    limited = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme"))
    problem = assert_problem(limited, 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 31 and problem["retry_after"] == int(
        limited.headers["retry-after"]
    )
    assert (
        gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("globex")).status_code == 202
    )


def test_an_idempotent_retry_is_not_rate_limited(make_gateway, headers) -> None:
    """A client that lost the response retries with its key: it gets its job back, not a 429."""
    gw = make_gateway(rate_limit_per_minute=1)
    key = {**headers("acme"), "Idempotency-Key": "lost-response"}
    first = gw.client.post("/v1/generate", json={"class_label": 1}, headers=key)
    assert first.status_code == 202
    for _ in range(3):
        retry = gw.client.post("/v1/generate", json={"class_label": 1}, headers=key)
        assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    assert_problem(gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")), 429)


def test_inflight_and_queue_depth_limits_answer_429(make_gateway, headers) -> None:
    gw = make_gateway(max_inflight_per_tenant=2)
    for _ in range(2):
        assert (
            gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).status_code
            == 202
        )
    limited = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme"))
    assert assert_problem(limited, 429)["type"].endswith("inflight-limit") and limited.headers["retry-after"]
    # A finished job frees its slot.
    gw.store.transition(gw.queue.enqueued[0].id, JobStatus.canceled)
    assert gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).status_code == 202

    full = make_gateway(max_queue_depth=1)
    assert (
        full.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).status_code == 202
    )
    refused = full.client.post("/v1/generate", json={"class_label": 1}, headers=headers("globex"))
    assert assert_problem(refused, 429)["type"].endswith("queue-full")


def test_oversized_bodies_are_413(make_gateway, headers) -> None:
    gw = make_gateway(max_body_bytes=2048)
    big = {"class_label": 1, "metadata": {"blob": "x" * 4000}}
    assert_problem(gw.client.post("/v1/generate", json=big, headers=headers("acme")), 413)

    def chunks():  # no Content-Length: the size is counted as the body streams in
        for _ in range(10):
            yield b" " * 1000
        yield b'{"class_label": 1}'

    streamed = gw.client.post(
        "/v1/generate", content=chunks(), headers={**headers("acme"), "Content-Type": "application/json"}
    )
    assert_problem(streamed, 413)
    assert gw.queue.enqueued == []


def test_malformed_json_is_400_naming_the_position(make_gateway, headers) -> None:
    gw = make_gateway()
    response = gw.client.post(
        "/v1/generate", content=b"{not json", headers={**headers("acme"), "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert (problem["line"], problem["column"]) == (1, 2) and "line 1, column 2" in problem["detail"]


def test_enqueue_failure_is_503_and_the_job_is_marked_failed(make_gateway, headers) -> None:
    gw = make_gateway()
    gw.queue.fail = True
    response = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme"))
    problem = assert_problem(response, 503)
    job = gw.store.get(problem["job_id"])
    assert job.status is JobStatus.failed and job.error.reason == "enqueue_failed"
    assert response.headers["retry-after"]


class BrokenStore(MemoryJobStore):
    async def admit(self, *args: object, **kwargs: object) -> Admission:
        raise RuntimeError("secret internal detail")


def test_unexpected_errors_are_500_problems_without_internals(make_gateway, headers) -> None:
    gw = make_gateway(raise_server_exceptions=False)
    gw_broken = make_gateway(store=BrokenStore(gw.settings.limits), raise_server_exceptions=False)
    response = gw_broken.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme"))
    problem = assert_problem(response, 500)
    assert "secret internal detail" not in response.text and problem["request_id"]


def test_routing_errors_are_problems(make_gateway, headers) -> None:
    gw = make_gateway()
    assert_problem(gw.client.get("/v1/nothing-here", headers=headers("acme")), 404)
    not_allowed = gw.client.delete("/v1/generate", headers=headers("acme"))
    assert_problem(not_allowed, 405)
    assert "POST" in not_allowed.headers.get("allow", "")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("wait=5", 5.0),
        ("respond-async, wait=7.5", 7.5),
        ("Wait=100", 60.0),
        ("wait", 60.0),
        ("nowait=3", None),
    ],
)
def test_prefer_wait_parsing(header, expected) -> None:
    from service.routes.generate import parse_prefer_wait

    assert parse_prefer_wait(header, 60.0) == expected
