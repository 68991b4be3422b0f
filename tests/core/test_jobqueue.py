"""`CeleryJobQueue` writes its task messages itself: they must stay what Celery's `send_task` writes."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import redis

from core.contract import Job, JobKind, JobStatus
from core.jobqueue import CeleryJobQueue
from core.jobstore.base import utcnow
from core.settings import Settings
from core.tasks import QUEUE_GENERATE, TASK_GENERATE

_PER_MESSAGE = ("id", "root_id", "correlation_id", "delivery_tag")  # uuids, new in every message


def _comparable(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for part in ("headers", "properties"):
        for name in _PER_MESSAGE:
            message[part].pop(name, None)
    return message


def test_enqueued_messages_equal_celerys_send_task(redis_server) -> None:
    url = redis_server.url(db=12)  # Celery's queue keys are not namespaced: a database of its own
    client = redis.Redis.from_url(url)
    client.delete(QUEUE_GENERATE)
    queue = CeleryJobQueue(Settings().override(redis_url=url))
    job = Job(
        id=uuid.uuid4().hex, kind=JobKind.generate, status=JobStatus.queued, tenant="t", created_at=utcnow()
    )
    try:
        args = [job.id]
        queue.app.send_task(
            TASK_GENERATE, args=args, queue=QUEUE_GENERATE, routing_key=QUEUE_GENERATE, ignore_result=True
        )
        queue.enqueue(job)

        async def enqueue_async() -> None:
            await queue.enqueue_async(job)
            await queue.aclose()

        asyncio.run(enqueue_async())
        celerys, *ours = (_comparable(raw) for raw in reversed(client.lrange(QUEUE_GENERATE, 0, -1)))
        assert len(ours) == 2
        assert ours == [celerys, celerys]
        assert celerys["headers"]["task"] == TASK_GENERATE and celerys["body"][0] == args
    finally:
        client.delete(QUEUE_GENERATE)
        client.close()
        queue.stop()
