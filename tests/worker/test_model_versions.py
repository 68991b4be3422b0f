"""A job pinned to `name@version` runs on that version only: another worker's delivery is sent back uncounted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.contract import Job, JobStatus
from core.jobstore import JobStore, MemoryJobStore
from core.jobstore.base import utcnow
from core.manifests import write_manifest
from core.settings import Settings
from core.storage import LocalStorage
from worker.engine import Engine
from worker.engine.loading import model_identities
from worker.jobs import execute_job
from worker.jobs.common import JobContext, make_worker_id
from worker.model_versions import ModelVersionUnavailable

FINGERPRINT_1 = "1" * 64
FINGERPRINT_2 = "2" * 64


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().override(data_dir=tmp_path, lease_s=5, heartbeat_s=0.2, progress_interval_s=0)


@pytest.fixture
def store(settings: Settings) -> MemoryJobStore:
    return MemoryJobStore(settings.limits)


def deliver(job: Job, store: JobStore, engine: Engine, settings: Settings, tmp_path: Path) -> Job | None:
    return execute_job(
        job.id, JobContext(store, LocalStorage(tmp_path / "s"), engine, settings, make_worker_id())
    )


def test_a_worker_without_the_pinned_version_leaves_the_job_queued_and_uncounted(
    engine: Engine,
    store: MemoryJobStore,
    settings: Settings,
    tmp_path: Path,
    generate_job: Callable[..., Job],
    submit: Callable[[JobStore, Job], Job],
) -> None:
    engine.identities = {"tiny": ("tiny", "2", FINGERPRINT_2)}  # the new version only
    job = submit(store, generate_job(model="tiny@1"))
    with pytest.raises(ModelVersionUnavailable, match=r"pinned to 'tiny@1', which this worker does not hold"):
        deliver(job, store, engine, settings, tmp_path)
    after = store.get(job.id)
    assert after is not None and after.status is JobStatus.queued and after.attempts == 0
    assert store.record_delivery(job.id) == 1  # the refused delivery was never counted

    # A worker that holds version 1 (here: the same engine after a rollback) runs it and records the version.
    engine.identities = {"tiny": ("tiny", "1", FINGERPRINT_1)}
    final = deliver(job, store, engine, settings, tmp_path)
    assert final is not None and final.status is JobStatus.succeeded
    assert (final.model_version, final.model_fingerprint) == ("1", FINGERPRINT_1)


def test_pins_by_fingerprint_prefix_and_plain_names_run_on_what_the_worker_holds(
    engine: Engine,
    store: MemoryJobStore,
    settings: Settings,
    tmp_path: Path,
    generate_job: Callable[..., Job],
    submit: Callable[[JobStore, Job], Job],
) -> None:
    engine.identities = {"tiny": ("tiny", "2", FINGERPRINT_2)}
    pinned = submit(store, generate_job(model=f"tiny@{FINGERPRINT_2[:12]}"))
    plain = submit(store, generate_job(model="tiny"))
    for job in (pinned, plain):
        final = deliver(job, store, engine, settings, tmp_path)
        assert final is not None and final.status is JobStatus.succeeded
        assert (final.model_version, final.model_fingerprint) == ("2", FINGERPRINT_2)
    too_short = submit(store, generate_job(model=f"tiny@{FINGERPRINT_2[:8]}"))
    with pytest.raises(ModelVersionUnavailable):
        deliver(too_short, store, engine, settings, tmp_path)


def test_the_celery_task_sends_a_refused_delivery_again() -> None:
    from worker import celery_app

    assert ModelVersionUnavailable in celery_app.generate.autoretry_for
    assert ModelVersionUnavailable in celery_app.finetune.autoretry_for
    assert celery_app.generate.max_retries is None  # until a worker with the version takes it


def test_the_engine_learns_versions_and_fingerprints_from_the_catalog(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import shutil

    old, new = tmp_path / "tiny-1", tmp_path / "tiny-2"
    shutil.copytree(tiny_model_dir, old)
    shutil.copytree(tiny_model_dir, new)
    (new / "NOTES.md").write_text("retrained")
    first = write_manifest(old, "1")
    catalog = Settings().override(models=f"tiny@2={new},tiny@1={old}").catalog
    identities: dict[str, Any] = model_identities(catalog)
    assert list(identities) == ["tiny", "tiny@1"]
    assert identities["tiny@1"] == ("tiny", "1", first.fingerprint)
    name, version, fingerprint = identities["tiny"]  # no manifest: the label from FAE_MODELS, files hashed
    assert (name, version) == ("tiny", "2") and fingerprint is not None and fingerprint != first.fingerprint


def test_a_pinned_job_no_worker_holds_still_ends_at_its_start_deadline(
    engine: Engine,
    store: MemoryJobStore,
    settings: Settings,
    tmp_path: Path,
    generate_job: Callable[..., Job],
    submit: Callable[[JobStore, Job], Job],
) -> None:
    """The deadline is checked before the version: a job pinned to a version nobody holds is not sent on
    forever once it may no longer start; it is canceled, as the caller asked."""
    engine.identities = {"tiny": ("tiny", "2", FINGERPRINT_2)}
    late = generate_job(model="tiny@1", start_deadline_s=1)
    late = submit(store, late.model_copy(update={"created_at": utcnow() - timedelta(seconds=5)}))
    final = deliver(late, store, engine, settings, tmp_path)
    assert final is not None and final.status is JobStatus.canceled
    assert final.error is not None and final.error.reason == "start_deadline_exceeded"
