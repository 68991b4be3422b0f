"""The client's parsers on their own: server-sent events, Retry-After, problem JSON, forward-compatible types."""

from __future__ import annotations

import email.utils
import time

import httpx
from fae_client import APIError, ConflictError, InternalServerError, Job, RateLimitError
from fae_client._core import Config, Core, parse_event
from fae_client._sse import SSEParser
from fae_client.errors import error_from_response, parse_retry_after


def test_sse_parser_joins_data_lines_skips_comments_and_keeps_the_last_id() -> None:
    parser = SSEParser()
    lines = [
        ": keep-alive",
        "",
        "id: 4",
        "event: progress",
        'data: {"step": 2,',
        'data: "total": 5}',
        "retry: 1500",
        "",
    ]
    events = [event for line in lines if (event := parser.feed(line))]
    assert len(events) == 1
    assert (events[0].event, events[0].id, events[0].retry_ms) == ("progress", "4", 1500)
    assert events[0].data == '{"step": 2,\n"total": 5}'
    assert parser.feed("data: x") is None and parser.feed("").id == "4"  # the id carries over


def test_progress_events_of_either_shape_are_read() -> None:
    small = parse_event("progress", '{"step": 3, "total": 10, "eta_s": 1.5}', "7")
    assert small.job is None and small.progress.step == 3 and small.progress.eta_s == 1.5
    whole = parse_event(
        "progress", '{"id": "j", "status": "running", "progress": {"step": 4, "total": 9}}', "8"
    )
    assert whole.job.id == "j" and whole.progress.total == 9


def test_retry_after_as_seconds_or_http_date() -> None:
    assert (
        parse_retry_after("7") == 7.0
        and parse_retry_after(None) is None
        and parse_retry_after("soon") is None
    )
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after(later) <= 30


def test_error_classes_by_status_and_non_json_bodies() -> None:
    problem = {"type": "urn:fae-serve:problem:rate-limited", "title": "Too Many Requests", "status": 429,
               "detail": "slow down", "request_id": "r1", "retry_after": 3}  # fmt: skip
    error = error_from_response(httpx.Response(429, json=problem, headers={"Retry-After": "9"}))
    assert isinstance(error, RateLimitError) and error.retry_after == 3 and error.request_id == "r1"
    assert isinstance(error_from_response(httpx.Response(409, json={"status": 409})), ConflictError)
    proxy = error_from_response(
        httpx.Response(502, text="<html>bad gateway</html>", headers={"X-Request-ID": "r2"})
    )
    assert (
        isinstance(proxy, InternalServerError) and "bad gateway" in proxy.detail and proxy.request_id == "r2"
    )
    odd = error_from_response(httpx.Response(418, json={"detail": "teapot"}))
    assert type(odd) is APIError and odd.type == "about:blank"


def test_types_keep_unknown_fields_and_statuses() -> None:
    job = Job.model_validate(
        {"id": "j", "status": "paused", "new_field": {"a": 1}, "outputs": [{"index": 0, "x": 1}]}
    )
    assert job.status == "paused" and not job.done and job.new_field == {"a": 1}  # type: ignore[attr-defined]
    assert job.outputs[0].url is None


def test_every_request_stays_under_a_base_url_with_a_path_prefix() -> None:
    """A gateway behind an ingress at `/fae/`: API paths, given with or without a leading slash, stay under
    the prefix (the bearer key never goes to another path); an absolute URL (a download) is left alone."""
    for base in ("https://api.example.com/fae", "https://api.example.com/fae/"):
        core = Core(Config(base, "key", timeout=5, max_retries=0, max_retry_delay=1))
        for path in ("/v1/generate", "v1/jobs/abc", "/v1/models"):
            url = str(core.build("GET", path).url)
            assert url == f"https://api.example.com/fae/{path.lstrip('/')}"
        download = "https://files.example.com/tenants/t/jobs/1/0.png?sig=x"
        assert str(core.build("GET", download, authenticate=False).url) == download
