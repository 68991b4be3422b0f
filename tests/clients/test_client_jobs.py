"""The sync client against the real embedded server: generate and wait, image bytes, jobs, event streams."""

from __future__ import annotations

import base64
import io

import pytest
from fae_client import (
    ConflictError,
    DeadLetter,
    FAEClient,
    Job,
    JobFailedError,
    JobWaitTimeout,
    Model,
    NotFoundError,
)
from PIL import Image


@pytest.fixture
def fae(live_server) -> FAEClient:
    with FAEClient(live_server.base_url, live_server.key) as client:
        yield client


def pixels(png: bytes) -> bytes:
    """An image's pixels (the files differ: each carries its own provenance manifest)."""
    with Image.open(io.BytesIO(png)) as image:
        return image.tobytes()


def long_job(fae: FAEClient) -> Job:
    """A job that keeps the server's one worker thread busy for a while."""
    return fae.generate(class_label=2, n=8, steps=250)


def test_generate_waits_and_returns_typed_job_and_image_bytes(fae: FAEClient) -> None:
    job = fae.generate(class_label=1, n=2, steps=3, seed=7, wait=True, metadata={"sku": "a-1"})
    assert isinstance(job, Job) and job.succeeded and job.done
    assert job.model == "tiny" and job.seeds == [7, 8] and job.metadata == {"sku": "a-1"}
    assert job.created_at is not None and job.finished_at is not None and job.progress.step == 3
    images = fae.images(job)
    assert len(images) == 2
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and image.size[0] > 0
    again = fae.generate(class_label=1, steps=3, seed=7, wait=30)
    assert pixels(fae.images(again)[0]) == pixels(images[0])  # same seed, same image


def test_models_are_typed(fae: FAEClient) -> None:
    (model,) = fae.models.list()
    assert isinstance(model, Model) and model.name == "tiny" and model.default
    assert model.condition_type == "class" and model.image_size and model.num_classes


def test_dead_letters_are_typed_and_a_missing_one_is_404(fae: FAEClient) -> None:
    assert all(isinstance(letter, DeadLetter) for letter in fae.admin.dead_letters())
    with pytest.raises(NotFoundError):
        fae.admin.replay("never-dead-lettered")


def test_jobs_get_list_wait_and_cancel(fae: FAEClient) -> None:
    # Four long jobs ahead (about a second and a half of work on an idle machine), so the last job is still
    # waiting when the short wait below gives up (one long job alone can end within that wait).
    *ahead, busy = [long_job(fae) for _ in range(4)]
    queued = fae.generate(class_label=3, steps=3)
    assert queued.status == "queued" and not queued.done
    assert fae.jobs.get(queued.id).id == queued.id
    page = fae.jobs.list(limit=1)  # newest first, a page at a time
    assert [job.id for job in page.data] == [queued.id] and page.next_cursor
    older = fae.jobs.list(limit=1, cursor=page.next_cursor, kind="generate")
    assert [job.id for job in older.data] == [busy.id]
    with pytest.raises(JobWaitTimeout) as waited:
        fae.jobs.wait(queued.id, timeout=0.3)
    assert waited.value.job.id == queued.id and not waited.value.job.done
    with pytest.raises(ConflictError) as conflict:  # not finished: cancel it first
        fae.jobs.delete(queued.id)
    assert conflict.value.status == 409 and "cancel" in conflict.value.detail
    canceled = fae.jobs.cancel(queued.id)  # still queued behind the long job: canceled at once
    assert canceled.status == "canceled"
    with pytest.raises(JobFailedError):
        fae.images(canceled)
    for earlier in ahead:
        fae.jobs.cancel(earlier.id)
    stopping = fae.jobs.cancel(busy.id)
    assert stopping.cancel_requested or stopping.status == "canceled"
    assert fae.jobs.wait(busy.id, timeout=60).status == "canceled"
    fae.jobs.delete(busy.id)
    with pytest.raises(NotFoundError):
        fae.jobs.get(busy.id)


def test_generate_without_waiting_then_wait(fae: FAEClient) -> None:
    job = fae.generate(class_label=4, steps=3)
    assert job.status in ("queued", "running", "succeeded")
    done = fae.jobs.wait(job.id, timeout=60, poll_interval=0.2)
    assert done.succeeded and len(fae.images(done)) == 1


def test_stream_follows_a_job_to_its_end(fae: FAEClient) -> None:
    job = fae.generate(class_label=5, steps=20)
    events = list(fae.jobs.stream(job.id))
    assert events[0].event == "status" and events[0].job is not None and events[0].job.id == job.id
    last = events[-1]
    assert last.event == "status" and last.job is not None and last.job.succeeded
    assert all(event.id for event in events) and len({event.id for event in events}) == len(events)
    for event in events:
        assert event.job is not None or event.progress is not None


def test_b64_json_outputs_decode_to_the_same_image(fae: FAEClient) -> None:
    """`response_format: b64_json` (issue 15 item 3)."""
    by_url = fae.generate(class_label=6, steps=3, seed=11, wait=True)
    inline = fae.generate(class_label=6, steps=3, seed=11, wait=True, response_format="b64_json")
    output = inline.outputs[0]
    assert output.b64_json and output.url is None
    assert fae.images(inline) == [base64.b64decode(output.b64_json)]
    assert pixels(fae.images(inline)[0]) == pixels(fae.images(by_url)[0])


def test_jobs_carry_links(fae: FAEClient) -> None:
    """Job links and request id (issue 15 items 7 and 9)."""
    job = fae.generate(class_label=7, steps=3, wait=True)
    assert job.links is not None and job.links.self_ == f"/v1/jobs/{job.id}"
    assert job.links.cancel == f"/v1/jobs/{job.id}/cancel" and job.links.events == f"/v1/jobs/{job.id}/events"
    assert len(job.links.outputs) == 1 and job.request_id


def test_stream_resumes_after_last_event_id(fae: FAEClient) -> None:
    """Resumable SSE (issue 15 item 8): reconnecting after an event sends nothing seen before."""
    job = fae.generate(class_label=8, steps=10, wait=True)
    first = list(fae.jobs.stream(job.id))
    assert first[-1].job is not None and first[-1].job.succeeded
    resumed = list(fae.jobs.stream(job.id, last_event_id=first[-1].id))
    assert not {e.id for e in resumed} & {e.id for e in first}
    assert not [e for e in resumed if e.event == "status"]  # no duplicate status event
    halfway = list(fae.jobs.stream(job.id, last_event_id=first[0].id))  # resumed after the first event
    assert [e.id for e in halfway if e.event == "status"] == [e.id for e in first[1:] if e.event == "status"]
