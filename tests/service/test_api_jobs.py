"""Jobs: reading with presigned outputs, listing with pagination, cancel, server-sent events."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

from core.contract import JobStatus
from core.logs import ACCESS_LOGGER, JsonFormatter


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_outputs_download_through_signed_urls(make_gateway, headers, png) -> None:
    gw = make_gateway(complete=True)
    job = gw.client.post(
        "/v1/generate", json={"class_label": 2, "n": 2}, headers={**headers("acme"), "Prefer": "wait=10"}
    ).json()
    fetched = gw.client.get(f"/v1/jobs/{job['id']}", headers=headers("acme")).json()
    assert fetched["status"] == "succeeded" and fetched["timings"] == {"total": 0.01}
    for output in fetched["outputs"]:
        response = gw.client.get(output["url"])
        assert response.status_code == 200 and response.content == png()
        assert response.headers["content-type"] == "image/png"
    url = fetched["outputs"][0]["url"]
    query = parse_qs(urlsplit(url).query)
    tampered_signature = url.replace(query["signature"][0], "A" * len(query["signature"][0]))
    assert gw.client.get(tampered_signature).status_code == 403
    extended = url.replace(f"expires={query['expires'][0]}", f"expires={int(query['expires'][0]) + 3600}")
    assert gw.client.get(extended).status_code == 403
    expired_url = gw.storage.presign_get(fetched["outputs"][0]["key"], -1)
    assert gw.client.get(expired_url).status_code == 403
    assert gw.client.get(urlsplit(url).path).status_code == 422  # no signature at all


def test_list_is_paginated_newest_first(make_gateway, headers) -> None:
    gw = make_gateway()
    ids = [
        gw.client.post("/v1/generate", json={"class_label": i}, headers=headers("acme")).json()["id"]
        for i in range(5)
    ]
    gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("globex"))
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = gw.client.get("/v1/jobs", params=params, headers=headers("acme")).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    only_finetunes = gw.client.get("/v1/jobs", params={"kind": "finetune"}, headers=headers("acme")).json()
    assert only_finetunes["data"] == []
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "garbage"}, {"kind": "other"}):
        response = gw.client.get("/v1/jobs", params=bad, headers=headers("acme"))
        assert response.status_code == 422 and response.headers["content-type"].startswith(
            "application/problem"
        )


def test_queued_jobs_show_their_position(make_gateway, headers) -> None:
    gw = make_gateway()
    ids = [
        gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()["id"]
        for _ in range(3)
    ]
    positions = [
        gw.client.get(f"/v1/jobs/{i}", headers=headers("acme")).json()["queue_position"] for i in ids
    ]
    assert positions == [0, 1, 2]
    gw.store.transition(ids[0], JobStatus.running)
    gw.store.set_progress(ids[0], 4, 10, eta_s=1.2)
    running = gw.client.get(f"/v1/jobs/{ids[0]}", headers=headers("acme")).json()
    assert running["status"] == "running" and running["progress"] == {
        "step": 4,
        "total": 10,
        "eta_s": 1.2,
        "loss": None,
    }
    assert gw.client.get(f"/v1/jobs/{ids[2]}", headers=headers("acme")).json()["queue_position"] == 1


def test_every_request_gets_one_access_line(make_gateway, headers, caplog) -> None:
    """The job poll (its own services path) and an unmatched path each log one line with every field."""
    gw = make_gateway()
    job_id = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()["id"]
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    caplog.clear()
    polled = gw.client.get(f"/v1/jobs/{job_id}", headers={**headers("acme"), "X-Request-ID": "poll-1"})
    assert polled.status_code == 200 and polled.json()["id"] == job_id
    assert gw.client.get("/nowhere", headers=headers("acme")).status_code == 404
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(e["message"], e["route"], e["status_code"]) for e in lines] == [
        (f"GET /v1/jobs/{job_id} 200", "/v1/jobs/{job_id}", 200),
        ("GET /nowhere 404", "unmatched", 404),
    ]
    assert lines[0]["request_id"] == "poll-1" and lines[0]["tenant"] == "acme"
    fields = ["ts", "level", "logger", "message", "request_id", "job_id", "tenant", "route", "status_code"]
    assert all(list(e) == [*fields, "duration_s"] and e["duration_s"] >= 0 for e in lines)


def test_cancel_queued_and_running_jobs(make_gateway, headers) -> None:
    gw = make_gateway()
    queued = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    canceled = gw.client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers("acme"))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert [job.id for job in gw.queue.terminal] == [queued["id"]]  # its webhook gets scheduled

    running = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    gw.store.transition(running["id"], JobStatus.running)
    flagged = gw.client.post(f"/v1/jobs/{running['id']}/cancel", headers=headers("acme"))
    assert flagged.status_code == 202
    assert flagged.json()["status"] == "running" and flagged.json()["cancel_requested"] is True
    assert gw.store.cancel_requested(running["id"])
    again = gw.client.post(f"/v1/jobs/{queued['id']}/cancel", headers=headers("acme"))
    assert again.status_code == 200 and again.json()["status"] == "canceled"


def test_cancel_reaches_a_running_worker(make_gateway, headers) -> None:
    gw = make_gateway(complete=True, delay_s=0.6)
    job = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    deadline = time.monotonic() + 5
    while gw.store.get(job["id"]).status is JobStatus.queued and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers("acme")).status_code == 202
    waited = None
    while time.monotonic() < deadline:
        waited = gw.client.get(f"/v1/jobs/{job['id']}", headers=headers("acme")).json()
        if waited["status"] in ("canceled", "succeeded"):
            break
        time.sleep(0.05)
    assert waited["status"] == "canceled" and waited["outputs"] == []


def test_events_stream_status_and_progress_until_done(make_gateway, headers) -> None:
    gw = make_gateway(complete=True, delay_s=0.3)
    job = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    response = gw.client.get(f"/v1/jobs/{job['id']}/events", headers=headers("acme"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    # progress events are small: step, total and eta, not the whole job
    assert any(
        kind == "progress" and set(data) == {"step", "total", "eta_s"} and data["step"] > 0
        for kind, data in events
    )
    assert events[-1][1]["outputs"][0]["url"].startswith("http://testserver/v1/files/")


def test_events_of_a_finished_job_end_at_once_and_streams_are_bounded(make_gateway, headers) -> None:
    gw = make_gateway(complete=True, events_max_s=0.3)
    done = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=10"}
    ).json()
    events = sse_events(gw.client.get(f"/v1/jobs/{done['id']}/events", headers=headers("acme")).text)
    assert [(kind, data["status"]) for kind, data in events] == [("status", "succeeded")]
    gw.queue.complete = False
    waiting = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    started = time.monotonic()
    events = sse_events(gw.client.get(f"/v1/jobs/{waiting['id']}/events", headers=headers("acme")).text)
    assert time.monotonic() - started < 5
    assert [data["status"] for _, data in events] == ["queued"]
