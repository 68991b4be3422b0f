"""A queued job's event stream tells the caller when it moves up the queue, in a small `progress` event."""

from __future__ import annotations

import json
import threading
import time

import pytest

from service.routes import jobs as job_routes


def test_a_queued_job_streams_its_new_queue_position(
    make_gateway, headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_routes, "_REREAD_S", 0.1)
    gw = make_gateway(events_max_s=1.5)  # nothing runs the jobs: they stay queued
    first, second = (
        gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
        for _ in range(2)
    )
    canceler = threading.Timer(
        0.4, lambda: gw.client.post(f"/v1/jobs/{first['id']}/cancel", headers=headers("acme"))
    )
    canceler.start()
    started = time.monotonic()
    text = gw.client.get(f"/v1/jobs/{second['id']}/events", headers=headers("acme")).text
    canceler.join()
    assert time.monotonic() - started < 5  # the stream is bounded by FAE_EVENTS_MAX_S
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    assert events[0][0] == "status" and events[0][1]["queue_position"] == 1
    assert ("progress", {"step": 0, "total": 0, "eta_s": None, "queue_position": 0}) in events
