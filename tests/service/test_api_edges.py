"""The edges a client trips on (issue 15, items 4, 7 and 9), on the real gateway app: invalid JSON, media types,
strict bodies, unknown query parameters, `Prefer: respond-async`, HEAD on file URLs, one title per status,
job links, JS-safe seeds, start deadlines, and one request id from the access log to the job record."""

from __future__ import annotations

import json
import logging
import re

import pytest

from core.contract import MAX_SEED
from core.logs import ContextFilter, JsonFormatter
from service.problems import TITLES

PROBLEM = "application/problem+json"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] == TITLES[status]
    return body


def test_invalid_json_is_400_naming_line_and_column(make_gateway, headers) -> None:
    gw = make_gateway()
    body = b'{\n  "class_label": 1,\n  "n": ,\n}'
    response = gw.client.post(
        "/v1/generate", content=body, headers={**headers("acme"), "Content-Type": "application/json"}
    )
    refused = problem(response, 400)
    assert (refused["line"], refused["column"]) == (3, 8), refused
    assert "line 3, column 8" in refused["detail"] and refused["type"].endswith("invalid-json")
    finetune = gw.client.post(
        "/v1/finetunes",
        content=b'{"steps": 5,,}',
        headers={**headers("acme"), "Content-Type": "application/json"},
    )
    assert problem(finetune, 400)["column"] == 13
    assert gw.queue.enqueued == []


def test_missing_or_wrong_content_type_is_415(make_gateway, headers) -> None:
    gw = make_gateway()
    body = b'{"class_label": 1}'
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded"):
        sent = {**headers("acme"), **({"Content-Type": content_type} if content_type else {})}
        response = gw.client.post("/v1/generate", content=body, headers=sent)
        refused = problem(response, 415)
        assert "application/json" in refused["detail"], refused
    json_ok = {**headers("acme"), "Content-Type": "application/json; charset=utf-8"}
    assert gw.client.post("/v1/generate", content=body, headers=json_ok).status_code == 202


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", True), ("steps", "3"), ("seed", "42"), ("guidance_scale", "2.0"), ("class_label", 1.0)],
)
def test_request_bodies_are_strict(make_gateway, headers, field, value) -> None:
    gw = make_gateway()
    response = gw.client.post("/v1/generate", json={"class_label": 1, field: value}, headers=headers("acme"))
    refused = problem(response, 422)
    assert refused["errors"][0]["loc"] == ["body", field], refused
    assert gw.queue.enqueued == []


def test_unknown_query_parameters_are_422(make_gateway, headers) -> None:
    gw = make_gateway()
    refused = problem(gw.client.get("/v1/jobs?status=succeeded", headers=headers("acme")), 422)
    assert refused["errors"] == [
        {"loc": ["query", "status"], "msg": "unknown query parameter", "type": "extra_forbidden"}
    ]
    assert "kind" in refused["detail"] and "limit" in refused["detail"]  # names what the route takes
    assert gw.client.get("/v1/jobs?kind=generate&limit=5", headers=headers("acme")).status_code == 200
    assert problem(gw.client.get("/v1/models?verbose=1", headers=headers("acme")), 422)
    posted = gw.client.post("/v1/generate?wait=1", json={"class_label": 1}, headers=headers("acme"))
    assert problem(posted, 422) and gw.queue.enqueued == []
    assert problem(gw.client.get("/healthz?x=1"), 422) and problem(gw.client.get("/docs?x=1"), 422)
    openai = gw.client.post("/v1/images/generations?n=2", json={"prompt": "a"}, headers=headers("acme"))
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "n"  # OpenAI's status and shape


def test_every_documented_operation_refuses_unknown_query_parameters(make_gateway, headers) -> None:
    """Each route checks its query itself, before its dependencies and body (`GatewayRoute`, the class every
    router sets): a router that forgot it would let unknown parameters through."""
    gw = make_gateway()
    checked = 0
    for path, operations in gw.client.get("/openapi.json").json()["paths"].items():
        url = re.sub(r"\{[^}]+\}", "0" * 32, path) + "?zz_unknown=1"
        for method in operations:
            response = gw.client.request(method.upper(), url, headers=headers("acme"))
            named = method == "head" or "zz_unknown" in response.text  # HEAD answers without a body
            assert response.status_code in (400, 422) and named, (method, path)
            checked += 1
    assert checked > 25 and gw.queue.enqueued == []


def test_prefer_respond_async_answers_202_at_once(make_gateway, headers) -> None:
    gw = make_gateway(complete=True, delay_s=0.5)
    prefer = {**headers("acme"), "Prefer": "respond-async, wait=10"}
    response = gw.client.post("/v1/generate", json={"class_label": 1}, headers=prefer)
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    assert response.headers["preference-applied"] == "respond-async"
    waited = gw.client.post(
        "/v1/generate", json={"class_label": 2}, headers={**headers("acme"), "Prefer": "wait=10"}
    )
    assert waited.status_code == 200 and waited.headers["preference-applied"] == "wait=10"


def test_head_on_a_file_url_answers_its_headers(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    job = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=10"}
    ).json()
    url = job["outputs"][0]["url"]
    got = gw.client.get(url)
    head = gw.client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) == len(got.content) > 0
    assert gw.client.head(url.replace("signature=", "signature=x")).status_code == 403


def test_one_title_per_status_code(make_gateway, headers) -> None:
    gw = make_gateway(max_body_bytes=1024, max_upload_bytes=1_000_000)
    answers = [
        gw.client.post(
            "/v1/generate", json={"class_label": 1, "prompt": "x" * 1500}, headers=headers("acme")
        ),
        gw.client.post(
            "/v1/finetunes",
            files={"files": ("a.png", b"\0" * 2_000_000, "image/png")},
            headers=headers("acme"),
        ),
        gw.client.post("/v1/generate", json={"n": 99}, headers=headers("acme")),
        gw.client.get("/v1/jobs/nope", headers=headers("acme")),
        gw.client.get("/v1/nowhere", headers=headers("acme")),
    ]
    seen: dict[int, set[str]] = {}
    for response in answers:
        body = response.json()
        seen.setdefault(body["status"], set()).add(body["title"])
    assert all(titles == {TITLES[status]} for status, titles in seen.items()), seen
    assert TITLES[413] == "Content Too Large" and 413 in seen


def test_jobs_carry_links_and_the_creating_request_id(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    sent = {**headers("acme"), "Prefer": "wait=10", "X-Request-ID": "order-A-1", "traceparent": TRACEPARENT}
    job = gw.client.post("/v1/generate", json={"class_label": 1, "n": 2}, headers=sent).json()
    assert job["links"] == {
        "self": f"/v1/jobs/{job['id']}",
        "cancel": f"/v1/jobs/{job['id']}/cancel",
        "events": f"/v1/jobs/{job['id']}/events",
        "outputs": [output["url"] for output in job["outputs"]],
    }
    assert len(job["links"]["outputs"]) == 2
    assert job["request_id"] == "order-A-1" and job["traceparent"] == TRACEPARENT
    stored = gw.store.get(job["id"])
    assert stored.request_id == "order-A-1" and stored.traceparent == TRACEPARENT
    again = gw.client.get(job["links"]["self"], headers=headers("acme")).json()
    assert again["links"] == job["links"] and again["request_id"] == "order-A-1"
    bad_trace = {**headers("acme"), "traceparent": "not-a-trace"}
    other = gw.client.post("/v1/generate", json={"class_label": 1}, headers=bad_trace).json()
    assert other["traceparent"] is None and other["request_id"]  # a malformed header is not propagated


def test_the_access_line_of_a_submission_names_its_job(make_gateway, headers) -> None:
    gw = make_gateway()
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    access = logging.getLogger("fae.access")
    access.addHandler(handler)
    try:
        job = gw.client.post(
            "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "X-Request-ID": "req-77"}
        ).json()
    finally:
        access.removeHandler(handler)
    (line,) = [json.loads(text) for text in lines if '"POST /v1/generate' in text]
    assert line["request_id"] == "req-77" and line["job_id"] == job["id"] and line["status_code"] == 202


def test_seeds_are_accepted_up_to_2_to_the_53_and_documented(make_gateway, headers) -> None:
    gw = make_gateway()
    ok = gw.client.post("/v1/generate", json={"class_label": 1, "seed": 2**53 - 1}, headers=headers("acme"))
    assert ok.status_code == 202 and ok.json()["request"]["seed"] == MAX_SEED == 2**53 - 1
    too_big = gw.client.post("/v1/generate", json={"class_label": 1, "seed": 2**53}, headers=headers("acme"))
    assert problem(too_big, 422)["errors"][0]["loc"] == ["body", "seed"]
    seed = gw.client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"][
        "seed"
    ]
    spec = next(s for s in seed.get("anyOf", [seed]) if s.get("type") == "integer")
    assert spec["maximum"] == 2**53 - 1 and "2^53" in seed["description"]


def test_start_deadline_is_validated_and_stored(make_gateway, headers) -> None:
    gw = make_gateway()
    ok = gw.client.post(
        "/v1/generate", json={"class_label": 1, "start_deadline_s": 30}, headers=headers("acme")
    )
    assert ok.status_code == 202 and ok.json()["request"]["start_deadline_s"] == 30
    for bad in (0, -1, 10**9, "30"):
        response = gw.client.post(
            "/v1/generate", json={"class_label": 1, "start_deadline_s": bad}, headers=headers("acme")
        )
        assert problem(response, 422)["errors"][0]["loc"] == ["body", "start_deadline_s"]
