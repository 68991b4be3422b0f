"""Admin dead letters, probes, /metrics, OpenAPI."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

from core.contract import JobStatus
from core.jobstore import RedisJobStore


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_dead_letters_list_and_replay(make_gateway, headers) -> None:
    gw = make_gateway()
    job = gw.client.post("/v1/generate", json={"class_label": 4}, headers=headers("acme")).json()
    gw.store.transition(job["id"], JobStatus.running)
    gw.store.dead_letter(job["id"], "killed its worker 3 times")
    listed = gw.client.get("/v1/admin/dead-letters", headers=headers("root")).json()["data"]
    assert [(r["job_id"], r["tenant"], r["kind"]) for r in listed] == [(job["id"], "acme", "generate")]
    assert "fae_dead_letters 1.0" in gw.client.get("/metrics").text  # sampled at scrape time
    failed = gw.client.get(f"/v1/jobs/{job['id']}", headers=headers("acme")).json()
    assert failed["status"] == "failed" and failed["error"]["reason"] == "dead_lettered"

    replay = gw.client.post(f"/v1/admin/dead-letters/{job['id']}/replay", headers=headers("root"))
    assert replay.status_code == 202
    new = replay.json()
    assert new["id"] != job["id"] and new["tenant"] == "acme" and new["status"] == "queued"
    assert new["metadata"]["replay_of"] == job["id"] and new["request"]["class_label"] == 4
    assert gw.queue.enqueued[-1].id == new["id"]
    assert gw.client.get("/v1/admin/dead-letters", headers=headers("root")).json()["data"] == []
    assert "fae_dead_letters 0.0" in gw.client.get("/metrics").text
    assert (
        gw.client.post(f"/v1/admin/dead-letters/{job['id']}/replay", headers=headers("root")).status_code
        == 404
    )
    # The tenant sees the replayed job as its own.
    assert gw.client.get(f"/v1/jobs/{new['id']}", headers=headers("acme")).status_code == 200


def test_probes(make_gateway) -> None:
    gw = make_gateway()
    assert gw.client.get("/healthz").json() == {"status": "ok"}
    ready = gw.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "job_store": True,
        "storage": True,
        "queue": True,
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = gw.settings.override(redis_url=f"redis://127.0.0.1:{dead_port}/0")
    broken = make_gateway(store=RedisJobStore(dead.redis, dead.limits))
    not_ready = broken.client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["content-type"].startswith("application/problem+json")
    assert not_ready.json()["checks"]["job_store"] is False
    assert broken.client.get("/healthz").status_code == 200
    # A request that needs the unreachable store is a 503 problem, not a 500.
    down = broken.client.get("/v1/jobs", headers={"Authorization": "Bearer acme-key-0001"})
    assert down.status_code == 503 and down.headers["retry-after"]


def test_metrics_families_are_present_and_move(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    before = gw.client.get("/metrics").text
    gw.client.post("/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=10"})
    gw.client.post("/v1/generate", json={"class_label": 99}, headers=headers("acme"))
    gw.queue.complete = False
    gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme"))
    after = gw.client.get("/metrics").text
    names = {family.name for family in text_string_to_metric_families(after)}
    assert {"fae_http_requests", "fae_http_request_duration_seconds", "fae_queue_depth", "fae_jobs"} <= names
    for status in ("200", "422", "202"):
        labels = {"route": "/v1/generate", "method": "POST", "status": status}
        moved = sample(after, "fae_http_requests_total", **labels) - sample(
            before, "fae_http_requests_total", **labels
        )
        assert moved == 1, status
    assert sample(
        after, "fae_http_request_duration_seconds_count", route="/v1/generate", method="POST"
    ) > sample(before, "fae_http_request_duration_seconds_count", route="/v1/generate", method="POST")
    assert sample(after, "fae_queue_depth", queue="generate") == 1


def test_openapi_documents_every_route(make_gateway) -> None:
    gw = make_gateway()
    spec = gw.client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/v1/generate",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/finetunes",
        "/v1/finetunes/{job_id}",
        "/v1/models",
        "/v1/adapters",
        "/v1/adapters/{adapter_id}",
        "/v1/admin/dead-letters",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths
    assert "multipart/form-data" in spec["paths"]["/v1/finetunes"]["post"]["requestBody"]["content"]
    assert gw.client.get("/docs").status_code == 200
