"""Structured logs: JSON lines with request/job/tenant ids from context, and no secret ever printed."""

from __future__ import annotations

import io
import json
import logging

from core.logs import (
    ACCESS_LOGGER,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    _FaeHandler,
    _sole_json_handler,
    bind,
    log_access,
    redact,
    register_secret,
)


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_every_line_carries_context_ids() -> None:
    logger, stream = capture(JsonFormatter())
    with bind(job_id="job-1", tenant="acme", request_id="req-9"):
        logger.info("started %s", "now", extra={"step": 3})
    logger.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == "started now" and inside["step"] == 3
    assert (inside["job_id"], inside["tenant"], inside["request_id"]) == ("job-1", "acme", "req-9")
    assert inside["level"] == "INFO" and inside["ts"]
    assert outside["job_id"] is None and outside["tenant"] is None


def test_secrets_are_masked_in_messages_extras_and_tracebacks() -> None:
    register_secret("super-secret-api-key")
    logger, stream = capture(JsonFormatter())
    try:
        raise ValueError("bad key super-secret-api-key")
    except ValueError:
        logger.exception(
            "Authorization: Bearer abc.def-123 used; secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La",
            extra={"url": "http://x/v1/files/k.png?expires=1&signature=SIGNATUREVALUE&X-Amz-Signature=abc"},
        )
    text = stream.getvalue()
    for leaked in ("super-secret-api-key", "abc.def-123", "whsec_MfKQ", "SIGNATUREVALUE", "Signature=abc"):
        assert leaked not in text, leaked
    entry = json.loads(text)
    assert "Bearer ***" in entry["message"] and "signature=***" in entry["url"]
    assert "ValueError" in entry["exception"]


def test_every_registered_secret_is_masked_however_many_and_however_alike() -> None:
    """One search finds any of many secrets (a prefix tree as one regex): secrets that share prefixes,
    that are prefixes of one another (the longest is masked whole) or that hold regex metacharacters."""
    alike = [f"tenant-key-{i:04d}-suffix" for i in range(300)]
    for secret in [*alike, "tenant-key-00", "tenant-key-0001-suffix-longer", "a.b*c+d?(e)[f]{g}|h^$\\"]:
        register_secret(secret)
    text = (
        "k=tenant-key-0001-suffix-longer j=tenant-key-0299-suffix x tenant-key-00 m=a.b*c+d?(e)[f]{g}|h^$\\ !"
    )
    assert redact(text) == "k=*** j=*** x *** m=*** !"
    assert (
        redact("tenant-key-0") == "tenant-key-0" and redact("a.bxc+d") == "a.bxc+d"
    )  # no partial or regex match
    assert redact("xtenant-key-0042-suffixy") == "x***y"  # found inside longer text, as before
    register_secret("zzzzzzab")
    register_secret("abcdefgh12345")  # starts inside the one before: no part of either stays in clear
    assert redact("k=zzzzzzabcdefgh12345 and abcdefgh12345zzzzzzab") == "k=*** and ***"


def test_text_format_masks_too() -> None:
    logger, stream = capture(TextFormatter())
    with bind(job_id="j2"):
        logger.warning("token Bearer zzz-top-secret")
    line = stream.getvalue()
    assert "job=j2" in line and "zzz-top-secret" not in line
    assert redact("nothing to hide") == "nothing to hide"


def test_access_lines_mask_what_a_request_supplies() -> None:
    """The access line searches only what a request can supply (path, request id): a secret there is masked."""
    register_secret("access-secret-key")
    logger, stream = capture(JsonFormatter())
    record = logger.makeRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        "%s %s %d",
        ("GET", "/v1/jobs/access-secret-key?token=Bearer abc", 200),
        None,
        extra={"route": "/v1/jobs/{job_id}", "status_code": 200, "duration_s": 0.0012},
    )
    with bind(request_id="req-access-secret-key", tenant="acme"):
        logger.handle(record)
    text = stream.getvalue()
    assert "access-secret-key" not in text and "abc" not in text
    entry = json.loads(text)
    assert entry["message"] == "GET /v1/jobs/***?token=Bearer *** 200" and entry["request_id"] == "req-***"
    assert entry["logger"] == ACCESS_LOGGER and entry["tenant"] == "acme" and entry["job_id"] is None
    assert (entry["route"], entry["status_code"], entry["duration_s"]) == ("/v1/jobs/{job_id}", 200, 0.0012)
    assert entry["level"] == "INFO" and entry["ts"]


def test_the_access_line_written_directly_is_the_one_logging_writes(monkeypatch) -> None:
    """A configured process's access lines skip `logging`'s record and handler passes (`log_access`); they are
    the very lines `logging` would write, and go through `logging` as soon as anything else would see them."""
    register_secret("direct-secret-key")
    stream = io.StringIO()
    ours = _FaeHandler(stream)
    ours.setFormatter(JsonFormatter())
    ours.addFilter(ContextFilter())
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [ours])  # alone, as `configure_logging` leaves it (no test capture)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        assert _sole_json_handler() is ours
        with bind(request_id="req-direct-secret-key", tenant="acme", job_id="job-7"):
            log_access("POST", "/v1/jobs/direct-secret-key", 202, "/v1/generate", 0.0031)
            other = logging.StreamHandler(io.StringIO())
            root.addHandler(other)  # now a second handler would see it: through `logging`
            assert _sole_json_handler() is None
            log_access("POST", "/v1/jobs/direct-secret-key", 202, "/v1/generate", 0.0031)
            root.removeHandler(other)
    finally:
        root.setLevel(level)
    direct, through_logging = (json.loads(line) for line in stream.getvalue().splitlines())
    assert direct.pop("ts") and through_logging.pop("ts")
    assert list(direct) == list(through_logging) and direct == through_logging
    assert direct["message"] == "POST /v1/jobs/*** 202" and direct["request_id"] == "req-***"
    assert (direct["tenant"], direct["job_id"], direct["route"], direct["status_code"]) == (
        "acme",
        "job-7",
        "/v1/generate",
        202,
    )
    ours.setFormatter(TextFormatter())
    assert _sole_json_handler() is None  # text lines are written by `logging`


def test_a_failed_direct_write_is_reported_once_and_never_raised(monkeypatch) -> None:
    """A stream that takes the line but fails to flush: the request goes on, the line is not written again
    through `logging`, and the failure is reported as `logging` reports its own."""

    class FlushFails(io.StringIO):
        def flush(self) -> None:
            raise OSError("pipe closed")

    stream = FlushFails()
    ours = _FaeHandler(stream)
    ours.setFormatter(JsonFormatter())
    ours.addFilter(ContextFilter())
    reported = []
    monkeypatch.setattr(ours, "handleError", reported.append)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [ours])
    level = root.level
    root.setLevel(logging.INFO)
    try:
        log_access("GET", "/healthz", 200, "/healthz", 0.001)
    finally:
        root.setLevel(level)
    assert len(stream.getvalue().splitlines()) == 1
    assert len(reported) == 1 and reported[0].name == ACCESS_LOGGER
