"""Structured logs: one JSON object a line, with the request id, job id and tenant on every line.

The ids come from context variables (`bind`), so code deep in a request or a job logs them without passing
them around. Secrets never reach the output: registered secret values and known credential shapes (bearer
tokens, `whsec_` secrets, URL signatures) are masked by the formatter itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from core.settings import ProcessSettings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
tenant_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
_CONTEXT = {"request_id": request_id_var, "job_id": job_id_var, "tenant": tenant_var}
# The W3C `traceparent` of the request being served: stored on the job it creates, logged by its worker.
traceparent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)

_MASK = "***"
# Each pattern with a text that every match contains, lowercased: a plain search skips the regex on most lines
# (every request's access line is redacted). "bearer" has no letter that case-insensitive matching pairs with
# a non-ASCII one (as it does i, s and k), so a match always lowercases to it.
_PATTERNS = [
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), "bearer"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_"),
    (
        re.compile(r"(?i)((?:signature|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s\"']+"),
        "=",
    ),
]
# Replaced whole under the lock, read without it: every log line scans it, registration is rare.
_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()

# Every request's line (service/middleware.py), with these extras: the route template and numbers, which no
# secret can reach (nor the level, logger name and time).
ACCESS_LOGGER = "fae.access"
ACCESS_FIELDS = ("route", "status_code", "duration_s")
# One encoder for every line: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def register_secret(value: str) -> None:
    """Mask this exact value wherever it would appear in a log line (API keys, signing keys...)."""
    if value and len(value) >= 6:
        global _secrets
        with _secrets_lock:
            _secrets = _secrets | {value}


def redact(text: str) -> str:
    lowered = text.lower()
    for pattern, marker in _PATTERNS:
        if marker in lowered:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _MASK, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


@contextlib.contextmanager
def bind(**fields: str | None) -> Iterator[None]:
    """Set request_id / job_id / tenant for everything logged inside the block."""
    tokens = [
        (_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in fields.items() if name in _CONTEXT
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_context(**fields: str | None) -> None:
    """Set context ids for the rest of the current task (a request's dependencies use this)."""
    for name, value in fields.items():
        if name in _CONTEXT:
            _CONTEXT[name].set(value)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER and not record.exc_info:
            return _access_line(record)
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, var in _CONTEXT.items():
            entry[name] = getattr(record, name, None) or var.get()
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(_ENCODER.encode(entry))


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _access_line(record: logging.LogRecord) -> str:
    """`JsonFormatter`'s line for an access record, built once per request: the same fields in the same order,
    without scanning the record's attributes for extras (they are `ACCESS_FIELDS`), and with only the values a
    request can supply searched for secrets (each search looks for every registered secret): the message (its
    path) and the request id (the client's X-Request-ID). The tenant is the API key's, from configuration, and
    job ids are the gateway's own."""
    entry: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname,
        "logger": record.name,
        "message": redact(record.getMessage()),
    }
    for name, var in _CONTEXT.items():
        entry[name] = getattr(record, name, None) or var.get()
    if entry["request_id"]:
        entry["request_id"] = redact(entry["request_id"])
    fields = vars(record)
    for name in ACCESS_FIELDS:
        entry[name] = fields[name]
    return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [job=%(job_id)s tenant=%(tenant)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _FaeHandler(logging.StreamHandler):
    """Marks the handler this module installed, so configuring twice replaces rather than duplicates it."""


def configure_logging(settings: ProcessSettings) -> None:
    handler = _FaeHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _FaeHandler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Server and library loggers go through the same handler (uvicorn's access log carries URLs).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
