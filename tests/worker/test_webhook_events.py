"""`job.started` / `job.progress` webhooks are named by what the job was when the worker emitted them, not when
they are delivered: through the embedded queue, and through the Celery task's real Redis message (whose older
two- and three-argument form still delivers)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from core.contract import Job, JobStatus
from core.jobqueue import CeleryJobQueue
from core.jobstore import JobStore, MemoryJobStore
from core.settings import Settings
from core.storage import LocalStorage
from core.tasks import QUEUE_WEBHOOKS
from core.webhooks import PROGRESS, STARTED
from worker.embedded_queue import InProcessJobQueue
from worker.jobs.webhook import attempt_delivery

EVENTS = ["job.started", "job.progress", "job.succeeded"]


def running(store: JobStore, job_id: str, attempts: int, step: int) -> Job:
    """The job as a worker sees it: started for the `attempts`-th time, at `step` of 10."""
    store.transition(job_id, JobStatus.running, attempts=attempts, started_at=datetime.now(UTC))
    return store.set_progress(job_id, step, 10)


def emit_then_move_on(store: JobStore, job: Job, notify: Callable[[Job, str], None]) -> None:
    """Attempt 1 starts and emits progress at steps 2 and 4; it is requeued before anything is delivered, and
    attempt 2 is at step 6 when the deliveries go out."""
    notify(running(store, job.id, attempts=1, step=0), STARTED)
    notify(store.set_progress(job.id, 2, 10), PROGRESS)
    notify(store.set_progress(job.id, 4, 10), PROGRESS)
    store.transition(job.id, JobStatus.queued)
    running(store, job.id, attempts=2, step=6)


def check_as_emitted(requests: list[tuple[dict[str, str], bytes]], job: Job) -> None:
    bodies = {headers["webhook-id"]: json.loads(body) for headers, body in requests}
    assert set(bodies) == {
        f"msg_{job.id}_started_1",  # not attempt 2's id, which its own start will carry
        f"msg_{job.id}_progress_1_2",
        f"msg_{job.id}_progress_1_4",  # two events, two ids: a receiver keeps both
    }
    assert bodies[f"msg_{job.id}_progress_1_2"]["data"]["progress"]["step"] == 2
    assert bodies[f"msg_{job.id}_progress_1_4"]["data"]["progress"]["step"] == 4
    assert all(body["id"] == webhook_id for webhook_id, body in bodies.items())


def test_the_embedded_queue_delivers_events_as_emitted(
    tmp_path: Path, tiny_model_dir: Path, generate_job: Callable[..., Job], webhook_receiver: Any
) -> None:
    settings = Settings().override(
        data_dir=tmp_path, models=f"tiny={tiny_model_dir}", webhook_allowlist="127.0.0.1"
    )
    store, storage = MemoryJobStore(settings.limits), LocalStorage(tmp_path / "storage")
    job, _ = store.create(generate_job(webhook_url=webhook_receiver.url, webhook_events=EVENTS))
    runner = InProcessJobQueue(settings, store, storage)
    emit_then_move_on(store, job, runner.notify_event)  # queued in the webhook heap, not yet delivered
    runner.start()
    try:
        check_as_emitted(webhook_receiver.wait_for(3), job)
    finally:
        runner.stop()


def _webhook_args(client: redis.Redis) -> list[list[Any]]:
    """The arguments of each `fae.webhook` message on the broker's webhooks queue, oldest first."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(QUEUE_WEBHOOKS, 0, -1))]
    return [json.loads(base64.b64decode(message["body"]))[0] for message in messages]


def test_the_celery_task_carries_the_emitted_event_and_takes_old_messages(
    redis_server: Any,
    tmp_path: Path,
    generate_job: Callable[..., Job],
    webhook_receiver: Any,
) -> None:
    url = redis_server.url(db=13)  # Celery's queue keys are not namespaced: a database of its own
    client = redis.Redis.from_url(url)
    client.delete(QUEUE_WEBHOOKS)
    settings = Settings().override(redis_url=url, data_dir=tmp_path, webhook_allowlist="127.0.0.1")
    store, storage = MemoryJobStore(settings.limits), LocalStorage(tmp_path / "storage")
    job, _ = store.create(generate_job(webhook_url=webhook_receiver.url, webhook_events=EVENTS))
    queue = CeleryJobQueue(settings)
    try:
        emit_then_move_on(store, job, queue.notify_event)
        messages = _webhook_args(client)
        assert [args[2] for args in messages] == [STARTED, PROGRESS, PROGRESS]
        assert [args[:2] for args in messages] == [[job.id, 1]] * 3
        for args in messages:  # what the worker's `fae.webhook` task does with each message
            assert attempt_delivery(args[0], args[1], store, storage, settings, *args[2:]) is None
        check_as_emitted(webhook_receiver.wait_for(3), job)
        # A message queued before the emitted event was carried: the job as it is now names it.
        webhook_receiver.requests.clear()
        attempt_delivery(job.id, 1, store, storage, settings, PROGRESS)
        ((headers, body),) = webhook_receiver.wait_for(1)
        assert headers["webhook-id"] == f"msg_{job.id}_progress_2_6"
        assert json.loads(body)["data"]["progress"]["step"] == 6
    finally:
        client.delete(QUEUE_WEBHOOKS)
        client.close()
        queue.stop()
