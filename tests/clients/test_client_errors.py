"""Typed errors from the problem JSON, retries that honour Retry-After, and one idempotency key per call."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import httpx
import pytest
from fae_client import (
    APIConnectionError,
    AuthenticationError,
    FAEClient,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
)

from tests.clients.conftest import KEYS


class Recorder:
    """Counts the requests a client sends (an httpx event hook) and the delays it sleeps."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []
        self.sleeps: list[float] = []

    def client(self, base_url: str, key: str, **options: Any) -> FAEClient:
        hooks = {"request": [self.requests.append], "response": [self.responses.append]}
        http = httpx.Client(event_hooks=hooks)
        return FAEClient(base_url, key, http_client=http, sleep=self.sleeps.append, **options)


def test_422_carries_the_problem_and_field_errors(live_server) -> None:
    with (
        FAEClient(live_server.base_url, live_server.key) as fae,
        pytest.raises(UnprocessableEntityError) as raised,
    ):
        fae.generate(class_label=1, n=99)
    error = raised.value
    assert error.status == 422 and error.type == "urn:fae-serve:problem:validation-error"
    assert error.title and "n" in error.detail and error.request_id
    assert any(e["loc"][-1] == "n" for e in error.errors)
    assert error.problem["status"] == 422


def test_401_403_404(live_server) -> None:
    with FAEClient(live_server.base_url, "not-a-key") as fae, pytest.raises(AuthenticationError) as raised:
        fae.models.list()
    assert raised.value.status == 401 and raised.value.detail
    with FAEClient(live_server.base_url, KEYS["tuner"]) as fae, pytest.raises(PermissionDeniedError):
        fae.generate(class_label=1, steps=2)  # a finetune-only key
    with FAEClient(live_server.base_url, live_server.key) as fae, pytest.raises(NotFoundError) as raised:
        fae.jobs.get("no-such-job")
    assert raised.value.status == 404 and "no-such-job" in raised.value.detail


def spend_the_minute(server) -> None:
    """Use up the tenant's one submission of this minute (if an earlier test has not)."""
    with FAEClient(server.base_url, server.key, max_retries=0) as fae, contextlib.suppress(RateLimitError):
        fae.generate(class_label=1, steps=2)


def test_429_retries_after_retry_after_with_one_idempotency_key(limited_server) -> None:
    spend_the_minute(limited_server)
    recorder = Recorder()
    with (
        recorder.client(
            limited_server.base_url, limited_server.key, max_retries=2, max_retry_delay=120
        ) as fae,
        pytest.raises(RateLimitError) as raised,
    ):
        fae.generate(class_label=2, steps=2)
    error = raised.value
    assert error.status == 429 and error.retry_after and 0 < error.retry_after <= 60
    assert error.headers["retry-after"] == str(int(error.retry_after))
    assert len(recorder.requests) == 3  # the call and two retries
    asked = [float(response.headers["retry-after"]) for response in recorder.responses[:2]]
    assert recorder.sleeps == asked and all(0 < delay <= 60 for delay in asked)  # as long as the server asked
    keys = {request.headers["idempotency-key"] for request in recorder.requests}
    assert len(keys) == 1  # the same key on every attempt of one call


def test_a_retry_after_longer_than_the_limit_raises_at_once(limited_server) -> None:
    spend_the_minute(limited_server)
    recorder = Recorder()
    with (
        recorder.client(
            limited_server.base_url, limited_server.key, max_retries=5, max_retry_delay=0.5
        ) as fae,
        pytest.raises(RateLimitError),
    ):
        fae.generate(class_label=2, steps=2)
    assert (
        len(recorder.requests) == 1 and recorder.sleeps == []
    )  # never slept, never retried sooner than asked


def test_a_lost_answer_is_retried_with_the_same_key_and_replayed(live_server) -> None:
    """The job is created but its answer never arrives (the connection drops): the retry, with the same
    Idempotency-Key, gets the same job back instead of a second one."""
    attempts: list[httpx.Request] = []

    class DropFirstAnswer(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.url.path == "/v1/generate":
                attempts.append(request)
                if len(attempts) == 1:
                    response.read()
                    raise httpx.ReadError("connection reset while reading the answer", request=request)
            return response

    http = httpx.Client(transport=DropFirstAnswer())
    with FAEClient(live_server.base_url, live_server.key, http_client=http, sleep=lambda s: None) as fae:
        job = fae.generate(class_label=1, steps=2, metadata={"attempt": "lost"})
        listed = fae.jobs.list(limit=10).data
    http.close()
    assert len(attempts) == 2
    assert attempts[0].headers["idempotency-key"] == attempts[1].headers["idempotency-key"]
    assert [j.id for j in listed if j.metadata == {"attempt": "lost"}] == [job.id]  # one job, not two


def test_connection_errors_are_retried_then_raised() -> None:
    with socket.socket() as unlistened:  # bound, never listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        recorder = Recorder()
        url = f"http://127.0.0.1:{unlistened.getsockname()[1]}"
        with recorder.client(url, "k", max_retries=2) as fae, pytest.raises(APIConnectionError):
            fae.jobs.get("x")
    assert len(recorder.requests) == 3 and len(recorder.sleeps) == 2
    assert 0 < recorder.sleeps[0] < recorder.sleeps[1]  # exponential backoff
