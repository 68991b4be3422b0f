"""The real embedded server (uvicorn on a loopback port, in-process worker, the tiny text model) end to end, for
issue 15's items 4, 5, 7 and 9: one request id from the submission's access line through the job record to every
worker log line (with the `traceparent`), seeds a JavaScript client keeps, a worker refusal that names no worker
path, and a start deadline that cancels a job left waiting in the queue."""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from core.contract import MAX_SEED
from core.logs import ContextFilter

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Collect(logging.Handler):
    """Every record, with the context ids the JSON formatter would write."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[Collect]:
    collect = Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    try:
        yield collect
    finally:
        root.removeHandler(collect)


def wait_done(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 60
    job = client.get(f"/v1/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/v1/jobs/{job_id}").json()
    return job


def test_one_request_id_from_the_access_line_to_every_worker_line(embedded_server, logs) -> None:
    server = embedded_server()
    sent = {"Prefer": "wait=60", "X-Request-ID": "shop-order-42", "traceparent": TRACEPARENT}
    with server.client() as client:
        response = client.post("/v1/generate", json={"prompt": "red apple", "steps": 2, "n": 2}, headers=sent)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["request_id"] == "shop-order-42"
    assert job["traceparent"] == TRACEPARENT

    access = [r for r in logs.records if r.name == "fae.access" and r.getMessage().startswith("POST")]
    assert [(r.request_id, r.job_id) for r in access] == [("shop-order-42", job["id"])]
    worker = [r for r in logs.records if r.name.startswith("worker.") and r.job_id == job["id"]]
    assert {r.getMessage() for r in worker} >= {"job started", "job succeeded"}
    assert all(r.request_id == "shop-order-42" for r in worker), [
        (r.getMessage(), r.request_id) for r in worker
    ]
    (started,) = [r for r in worker if r.getMessage() == "job started"]
    assert started.traceparent == TRACEPARENT

    # Seeds the real model drew: below 2^53, so a JavaScript client stores them exactly.
    assert len(job["seeds"]) == 2 and all(0 <= seed <= MAX_SEED == 2**53 - 1 for seed in job["seeds"])


def test_a_dataset_the_worker_refuses_names_no_worker_path(embedded_server) -> None:
    server = embedded_server()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for i in range(2):  # inside a zip the gateway cannot count them: the trainer refuses
            image = io.BytesIO()
            Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(image, format="PNG")
            bundle.writestr(f"img{i}.png", image.getvalue())
    storage = server.app.state.services.storage
    storage.put_bytes("tenants/acme/sets/small/data.zip", archive.getvalue(), "application/zip")
    with server.client() as client:
        response = client.post("/v1/finetunes", json={"s3_prefix": "tenants/acme/sets/small/", "steps": 1})
        assert response.status_code == 202, response.text
        job = wait_done(client, response.json()["id"])
    assert job["status"] == "failed" and job["error"]["reason"] == "invalid_input", job
    message = job["error"]["message"]
    assert "2 usable images" in message and "at least 10" in message, message
    data_dir = str(server.settings.process.data_dir)
    assert data_dir not in message and "/worker" not in message and "finetunes/" not in message, message


def test_a_job_left_queued_past_its_start_deadline_is_canceled(embedded_server) -> None:
    server = embedded_server(step_delay_s=0.05, worker_concurrency=1)  # one slow job at a time
    with server.client() as client:
        busy = client.post("/v1/generate", json={"prompt": "busy", "steps": 10}).json()
        late = client.post(
            "/v1/generate", json={"prompt": "late", "steps": 2, "start_deadline_s": 0.2}
        ).json()
        assert late["status"] == "queued" and late["request"]["start_deadline_s"] == 0.2
        late = wait_done(client, late["id"])
        assert late["status"] == "canceled" and late["error"]["reason"] == "start_deadline_exceeded", late
        assert late["started_at"] is None and late["outputs"] == []
        assert wait_done(client, busy["id"])["status"] == "succeeded"
        in_time = client.post(
            "/v1/generate",
            json={"prompt": "in time", "steps": 2, "start_deadline_s": 30},
            headers={"Prefer": "wait=60"},
        )
        assert in_time.json()["status"] == "succeeded"
