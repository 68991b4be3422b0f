"""How jobs reach workers: the ``JobQueue`` interface the gateway uses, and its Celery implementation.

``CeleryJobQueue`` sends ``fae.generate`` / ``fae.finetune`` / ``fae.webhook`` by name over Redis; it is
also the worker's and reaper's sender (requeues, webhooks). Embedded mode's in-process implementation lives
on the worker side (``worker/embedded_queue.py``) and is injected by the composition root (``fae/``).

The gateway stores a job first, then calls ``enqueue``; when it makes a job terminal itself (canceling a
queued job) it calls ``notify_terminal`` so the job's webhook still fires. Tasks are sent with
``ignore_result``: the job store is the source of truth for results, so no publish subscribes to a result
channel (one ``LPUSH`` per job).

A job's task is the hot path of every submission, so ``CeleryJobQueue`` writes its Celery message itself
(``task_message``: the same JSON, protocol 2, that ``send_task`` puts on a Redis queue; a test compares them)
and the gateway pushes it from the event loop (``enqueue_async``) instead of a thread running kombu, which
costs several times more CPU per publish.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import logging
import uuid
import weakref
from typing import Any

from celery.utils.nodenames import anon_nodename

from core.contract import Job
from core.redis_async import bounded, loop_client
from core.settings import Settings
from core.tasks import QUEUE_WEBHOOKS, TASK_FOR_KIND, TASK_WEBHOOK, make_celery
from core.webhooks import EmittedEvent

PUBLISH_TIMEOUT_S = 5.0  # the longest publishing a task may wait for Redis

log = logging.getLogger(__name__)


class JobQueue(abc.ABC):
    @abc.abstractmethod
    def enqueue(self, job: Job) -> None:
        """Hand a stored, queued job to the workers (its task, on its kind's queue)."""

    async def enqueue_async(self, job: Job) -> None:
        """``enqueue`` from the event loop; by default in a thread, since ``enqueue`` may block."""
        await asyncio.to_thread(self.enqueue, job)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close what ``enqueue_async`` opened on the running loop; called from the app's lifespan."""

    @abc.abstractmethod
    def notify_terminal(self, job: Job) -> None:
        """Schedule the webhook of a job that became terminal (no-op without ``webhook_url``)."""

    def notify_event(self, job: Job, event: str) -> None:  # noqa: B027 - optional hook
        """Schedule a `job.started` / `job.progress` webhook (the worker calls it; a gateway never does)."""

    @abc.abstractmethod
    def depth(self, queue_name: str) -> int:
        """Messages waiting in a queue (generate, finetune, webhooks)."""

    @abc.abstractmethod
    def ping(self) -> bool: ...

    @property
    def ready(self) -> bool:
        """Whether jobs will run now (embedded: the model is loaded and warm)."""
        return self.ping()

    def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (embedded mode); called from the app's lifespan."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop background work."""


class CeleryJobQueue(JobQueue):
    """Sends ``fae.generate`` / ``fae.finetune`` / ``fae.webhook`` by name; the broker is ``redis_url``."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.settings = settings
        self.app = make_celery(settings, name="fae-gateway")
        self._redis = redis.Redis.from_url(
            settings.redis.url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=5
        )
        self._origin = anon_nodename()  # what Celery puts in a message's `origin` header
        # The gateway's asyncio clients, one per event loop (tests may run several).
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def task_message(self, task: str, args: list[Any], queue_name: str) -> bytes:
        """The Redis list entry ``send_task(task, args, queue=..., routing_key=..., ignore_result=True)`` writes."""
        task_id = str(uuid.uuid4())
        headers = {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        body = base64.b64encode(json.dumps([args, {}, embed]).encode()).decode()
        properties = {
            "correlation_id": task_id,
            "reply_to": self.app.thread_oid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue_name},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        message = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        return json.dumps(message).encode()

    def enqueue(self, job: Job) -> None:
        task, queue_name = TASK_FOR_KIND[job.kind]
        self._redis.lpush(queue_name, self.task_message(task, [job.id], queue_name))

    async def enqueue_async(self, job: Job) -> None:
        task, queue_name = TASK_FOR_KIND[job.kind]
        message = self.task_message(task, [job.id], queue_name)
        await bounded(self._async().lpush(queue_name, message), PUBLISH_TIMEOUT_S)

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        if loop not in self._loop_clients:
            self._loop_clients[loop] = loop_client(self.settings.redis.url)
        return self._loop_clients[loop]

    async def aclose(self) -> None:
        client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def notify_terminal(self, job: Job) -> None:
        if job.webhook_url:
            send_webhook_task(self.app, job.id, attempt=1)

    def notify_event(self, job: Job, event: str) -> None:
        if job.webhook_url:
            emitted = EmittedEvent.of(job, event).model_dump(mode="json")
            send_webhook_task(self.app, job.id, attempt=1, event=event, emitted=emitted)

    def depth(self, queue_name: str) -> int:
        return int(self._redis.llen(queue_name))

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def stop(self) -> None:
        self._redis.close()


def send_webhook_task(
    app: Any,
    job_id: str,
    attempt: int,
    countdown_s: float = 0.0,
    event: str | None = None,
    emitted: dict[str, Any] | None = None,
) -> None:
    """Queue one delivery attempt of a job's webhook (``event``; None: its terminal status; ``emitted``: a start
    or progress event as captured when emitted, see `core.webhooks.EmittedEvent`) on the CPU-side ``webhooks``
    queue. The arguments only grow at the end, so a worker takes messages sent with fewer."""
    options: dict[str, Any] = {"countdown": countdown_s} if countdown_s > 0 else {}
    args: list[Any] = [job_id, attempt]
    if event is not None or emitted is not None:
        args.append(event)
    if emitted is not None:
        args.append(emitted)
    app.send_task(
        TASK_WEBHOOK,
        args=args,
        queue=QUEUE_WEBHOOKS,
        routing_key=QUEUE_WEBHOOKS,
        ignore_result=True,
        **options,
    )
