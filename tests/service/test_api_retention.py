"""Deleting data (issue 14), on real Redis and SeaweedFS: `DELETE /v1/jobs/{id}` with its images and dataset,
an adapter with the dataset that trained it, and the reaper's retention sweep; never another tenant's data."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core.contract import AdapterRecord, Job, JobKind, JobStatus, adapter_key, dataset_key, job_prefix
from core.jobstore import RedisJobStore
from core.jobstore.base import utcnow
from core.settings import Settings
from core.storage import S3Storage
from worker.leases import retention_claim
from worker.retention import RetentionSweeper, expired_keys

pytestmark = pytest.mark.services


def finished_finetune(store: RedisJobStore, storage: S3Storage, tenant: str) -> Job:
    job = Job(
        id=uuid.uuid4().hex,
        kind=JobKind.finetune,
        status=JobStatus.queued,
        tenant=tenant,
        created_at=utcnow(),
    )
    store.create(job)
    storage.put_bytes(dataset_key(tenant, job.id) + "a.png", b"png")
    store.transition(job.id, JobStatus.running)
    return store.transition(job.id, JobStatus.succeeded, adapter_id=f"ad-{job.id[:8]}")


def test_delete_job_removes_its_images_dataset_and_record(make_gateway, headers, real_parts) -> None:
    store, storage, _ = real_parts
    gw = make_gateway(store=store, storage=storage, complete=True)
    done = gw.client.post(
        "/v1/generate", json={"class_label": 1, "n": 2}, headers={**headers("acme"), "Prefer": "wait=10"}
    )
    job = done.json()
    assert job["status"] == "succeeded" and len(storage.list(job_prefix("acme", job["id"]))) == 2
    other = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("globex"), "Prefer": "wait=10"}
    )
    assert gw.client.delete(f"/v1/jobs/{job['id']}", headers=headers("globex")).status_code == 404
    assert (
        gw.client.delete(f"/v1/jobs/{job['id']}", headers=headers("tuner")).status_code == 404
    )  # other tenant
    assert gw.client.delete(f"/v1/jobs/{job['id']}", headers=headers("acme")).status_code == 204
    assert storage.list(job_prefix("acme", job["id"])) == []
    assert gw.client.get(f"/v1/jobs/{job['id']}", headers=headers("acme")).status_code == 404
    assert job["id"] not in [
        j["id"] for j in gw.client.get("/v1/jobs", headers=headers("acme")).json()["data"]
    ]
    assert len(storage.list(job_prefix("globex", other.json()["id"]))) == 1  # the other tenant's stay
    # A fine-tune's uploaded dataset goes with it.
    finetune = finished_finetune(store, storage, "acme")
    assert gw.client.delete(f"/v1/jobs/{finetune.id}", headers=headers("acme")).status_code == 204
    assert storage.list(dataset_key("acme", finetune.id)) == [] and store.get(finetune.id) is None


def test_an_unfinished_job_is_not_deleted(make_gateway, headers, real_parts) -> None:
    store, storage, _ = real_parts
    gw = make_gateway(store=store, storage=storage)
    job = gw.client.post("/v1/generate", json={"class_label": 1}, headers=headers("acme")).json()
    response = gw.client.delete(f"/v1/jobs/{job['id']}", headers=headers("acme"))
    assert response.status_code == 409 and "cancel it" in response.json()["detail"]
    assert store.get(job["id"]).status is JobStatus.queued


def test_deleting_an_adapter_deletes_its_dataset(make_gateway, headers, real_parts) -> None:
    store, storage, _ = real_parts
    gw = make_gateway(store=store, storage=storage)
    finetune = finished_finetune(store, storage, "acme")
    adapter_id = finetune.adapter_id
    assert adapter_id is not None
    storage.put_bytes(adapter_key("acme", adapter_id) + "adapter.safetensors", b"w")
    store.put_adapter(
        AdapterRecord(
            id=adapter_id,
            tenant="acme",
            model="cls",
            key=adapter_key("acme", adapter_id),
            job_id=finetune.id,
            created_at=utcnow(),
        )
    )
    assert gw.client.delete(f"/v1/adapters/{adapter_id}", headers=headers("acme")).status_code == 204
    assert (
        storage.list(dataset_key("acme", finetune.id)) == []
        and storage.list(adapter_key("acme", adapter_id)) == []
    )


def test_retention_sweeps_outputs_and_datasets_per_tenant(real_parts) -> None:
    store, storage, settings = real_parts
    queued = Job(
        id=uuid.uuid4().hex,
        kind=JobKind.finetune,
        status=JobStatus.queued,
        tenant="acme",
        created_at=utcnow(),
    )
    store.create(queued)  # a fine-tune still waiting in the queue: its dataset stays, whatever its age
    keys = {
        "acme-output": job_prefix("acme", "j1") + "0.png",
        "acme-dataset": dataset_key("acme", "f1") + "a.png",
        "acme-live-dataset": dataset_key("acme", queued.id) + "a.png",
        "acme-adapter": adapter_key("acme", "ad1") + "adapter.safetensors",
        "keep-output": job_prefix("keeper", "j2") + "0.png",
        "keep-dataset": dataset_key("keeper", "f2") + "a.png",
    }
    for key in keys.values():
        storage.put_bytes(key, b"x")
    retention = settings.override(
        output_retention_days=30, dataset_retention_days=7, tenant_retention="keeper=0/90"
    )
    in_10_days = datetime.now(UTC) + timedelta(days=10)
    assert expired_keys(storage, retention.storage, in_10_days, store) == [keys["acme-dataset"]]
    in_100_days = in_10_days + timedelta(days=90)
    expected = sorted([keys["acme-output"], keys["acme-dataset"], keys["keep-dataset"]])
    assert expired_keys(storage, retention.storage, in_100_days, store) == expected
    # The workers' sweeper, with a retention short enough to pass here: one sweep per interval, whoever claims it.
    short = settings.override(
        output_retention_days=1 / 86400,
        dataset_retention_days=1 / 86400,
        tenant_retention="keeper=0/0",
        retention_sweep_s=60,
    )
    time.sleep(1.2)
    first = RetentionSweeper(storage, short.storage, store, retention_claim(short))
    second = RetentionSweeper(storage, short.storage, store, retention_claim(short))
    try:
        assert first.sweep() == 2
        assert first.sweep() == 0 and second.sweep() == 0  # the interval's claim is taken
    finally:
        first.stop()
        second.stop()
    assert sorted(storage.list("tenants/")) == sorted(
        [keys["acme-live-dataset"], keys["acme-adapter"], keys["keep-output"], keys["keep-dataset"]]
    )


def test_malformed_tenant_retention_fails_at_start() -> None:
    with pytest.raises(ValueError, match="tenant=output_days/dataset_days"):
        Settings().override(tenant_retention="acme=30")
