"""`GET /v1/jobs/{id}/events` on the real embedded server: `status` events carry the whole job, `progress`
events only step, total and eta; every event has an id, a reconnect with `Last-Event-ID` resumes without
repeating a status, and an idle stream sends keep-alive comments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.routes import jobs as job_routes


@dataclass
class Event:
    event: str
    id: str | None
    data: Any


def read_stream(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> Iterator[Event | str]:
    """The stream's events, and its comment lines as plain strings, until the server ends it."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                yield line
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                yield Event(fields.get("event", "message"), fields.get("id"), json.loads(fields["data"]))
                fields = {}


@pytest.fixture
def server(embedded_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(job_routes, "_REREAD_S", 0.2)  # idle streams send a keep-alive this often
    return embedded_server(step_delay_s=0.3, progress_interval_s=0.05)


def submit(client: httpx.Client, steps: int) -> str:
    response = client.post("/v1/generate", json={"prompt": "red apple", "steps": steps})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_status_then_small_progress_events_until_the_end(server: Any) -> None:
    with server.client() as client:
        job_id = submit(client, steps=4)
        items = list(read_stream(client, job_id))
    events = [i for i in items if isinstance(i, Event)]
    assert any(i == ": keep-alive" for i in items)  # steps take 0.3 s; the stream re-reads every 0.2 s
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert (
        statuses[-1] == "succeeded" and statuses.count("running") == 1 and len(set(statuses)) == len(statuses)
    )
    assert events[-1].event == "status" and events[-1].data["outputs"]  # the whole job, then the end
    progress = [e for e in events if e.event == "progress"]
    assert progress and all(set(e.data) == {"step", "total", "eta_s"} for e in progress)
    assert [e.data["step"] for e in progress] == sorted({e.data["step"] for e in progress})
    assert all(e.id for e in events) and len({e.id for e in events}) == len(events)


def test_a_reconnect_with_last_event_id_resumes_where_it_left(server: Any) -> None:
    with server.client() as client:
        job_id = submit(client, steps=6)
        seen: list[Event] = []
        for item in read_stream(client, job_id):
            if isinstance(item, Event):
                seen.append(item)
                if item.event == "progress":
                    break  # the connection drops mid-job
        resumed = [i for i in read_stream(client, job_id, last_event_id=seen[-1].id) if isinstance(i, Event)]
        # It has every event already: 204, the one answer that stops a browser's EventSource reconnecting.
        finished = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": resumed[-1].id})
    assert [e.data["status"] for e in resumed if e.event == "status"] == ["succeeded"]  # no second "running"
    assert all(e.data["step"] > seen[-1].data["step"] for e in resumed if e.event == "progress")
    assert finished.status_code == 204 and finished.content == b""
    with server.client() as client:  # an id this API never sent: the stream starts from the job's status
        fresh = [i for i in read_stream(client, job_id, last_event_id="not-ours") if isinstance(i, Event)]
    assert [e.event for e in fresh] == ["status"] and fresh[0].data["status"] == "succeeded"


def test_an_unknown_job_is_a_404_before_any_stream(server: Any) -> None:
    with server.client() as client:
        response = client.get("/v1/jobs/nope/events")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
