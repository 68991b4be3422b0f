"""`AsyncFAEClient` runs the same operations as the sync client, on asyncio, against the real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fae_client import AsyncFAEClient, Job, NotFoundError, RateLimitError, UnprocessableEntityError


def test_async_generate_images_jobs_and_stream(live_server, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncFAEClient(live_server.base_url, live_server.key) as fae:
            models = await fae.models.list()
            assert [m.name for m in models] == ["tiny"]
            jobs = await asyncio.gather(
                *(fae.generate(class_label=i, steps=3, seed=i, wait=True) for i in range(3))
            )
            assert all(isinstance(job, Job) and job.succeeded for job in jobs)
            assert [job.seeds for job in jobs] == [[0], [1], [2]]
            images = await fae.images(jobs[0])
            assert images[0].startswith(b"\x89PNG")
            listed = await fae.jobs.list(limit=3)
            assert {job.id for job in listed.data} == {job.id for job in jobs}
            queued = await fae.generate(class_label=1, steps=15)
            events = [event async for event in fae.jobs.stream(queued.id)]
            assert events[-1].event == "status" and events[-1].job.succeeded
            assert (await fae.jobs.wait(queued.id, timeout=30)).succeeded
            with pytest.raises(NotFoundError):
                await fae.jobs.get("missing")
            with pytest.raises(UnprocessableEntityError):
                await fae.generate(class_label=1, steps=0)
            for path in (tmp_path / f"{i}.png" for i in range(11)):
                path.write_bytes(images[0])
            tune = await fae.finetunes.create(tmp_path, steps=1, rank=1)
            assert (await fae.finetunes.wait(tune.id, timeout=120, poll_interval=0.2)).succeeded

    asyncio.run(scenario())


def test_async_retries_honour_retry_after(limited_server) -> None:
    requests: list[httpx.Request] = []
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def scenario() -> None:
        http = httpx.AsyncClient(event_hooks={"request": [_async(requests.append)]})
        async with AsyncFAEClient(
            limited_server.base_url, limited_server.key, http_client=http, sleep=record_sleep, max_retries=1,
            max_retry_delay=120,
        ) as fae:  # fmt: skip
            with pytest.raises(RateLimitError):
                for label in range(2):  # the second at the latest is over the minute's budget
                    await fae.generate(class_label=label, steps=2)
        await http.aclose()

    asyncio.run(scenario())
    limited = [r for r in requests if r.url.path == "/v1/generate"][-2:]
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 60
    assert limited[0].headers["idempotency-key"] == limited[1].headers["idempotency-key"]


def _async(hook):
    async def call(value) -> None:
        hook(value)

    return call
