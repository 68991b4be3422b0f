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
import time
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
# Registered secrets, and one regex that finds any of them: rebuilt whole under the lock on registration (rare),
# read without it by every log line.
_secrets: frozenset[str] = frozenset()
_secrets_pattern: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()

# Every request's line (service/middleware.py), with these extras: the route template and numbers, which no
# secret can reach (nor the level, logger name and time).
ACCESS_LOGGER = "fae.access"
ACCESS_FIELDS = ("route", "status_code", "duration_s")
_access_logger = logging.getLogger(ACCESS_LOGGER)
# One encoder for every line: `json.dumps` with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def register_secret(value: str) -> None:
    """Mask this exact value wherever it would appear in a log line (API keys, signing keys...)."""
    if value and len(value) >= 6:
        global _secrets, _secrets_pattern
        with _secrets_lock:
            if value not in _secrets:
                _secrets = _secrets | {value}
                _secrets_pattern = None  # built again on the next line that is logged


def _secret_pattern() -> re.Pattern[str]:
    global _secrets_pattern
    pattern = _secrets_pattern
    if pattern is None:
        with _secrets_lock:
            try:
                any_secret = _trie_regex(_secrets)
            except RecursionError:  # a pathological set of secrets: each one as its own branch
                any_secret = "|".join(map(re.escape, sorted(_secrets, key=len, reverse=True)))
            # A lookahead: a match at every position where a secret starts, overlapping ones included.
            pattern = _secrets_pattern = re.compile(f"(?=({any_secret}))")
    return pattern


def _trie_regex(words: frozenset[str]) -> str:
    """A regex matching any of `words`, the longest first, shaped as their prefix tree: a search walks the tree
    once per position of the text instead of trying each word, so its cost does not grow with the number of
    secrets (a gateway registers every tenant's API key; a thousand of them tried one by one cost about 70 µs
    on every access line)."""
    if not words:
        return r"(?!)"  # matches nothing
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # a word ends here

    def branch(node: dict[str, Any]) -> str:
        ends = "" in node
        alternatives = [re.escape(char) + branch(child) for char, child in sorted(node.items()) if char]
        if not alternatives:
            return ""
        body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
        # Where a word ends but longer ones go on, the longer match is tried first (greedy `?`).
        return f"(?:{body})?" if ends else body

    return branch(tree)


def redact(text: str) -> str:
    lowered = text.lower()
    for pattern, marker in _PATTERNS:
        if marker in lowered:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _MASK, text)
    if _secrets:
        text = _mask_secrets(text)
    return text


def _mask_secrets(text: str) -> str:
    """`text` with every registered secret in it masked: the union of their spans, so a secret that starts
    inside another leaves no part of either in clear."""
    spans: list[list[int]] = []
    for match in _secret_pattern().finditer(text):
        start, end = match.start(), match.end(1)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    if not spans:
        return text
    parts, kept_from = [], 0
    for start, end in spans:
        parts += (text[kept_from:start], _MASK)
        kept_from = end
    parts.append(text[kept_from:])
    return "".join(parts)


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
            "ts": _timestamp(record.created),
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


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def _access_line(record: logging.LogRecord) -> str:
    """`JsonFormatter`'s line for an access record (one that `log_access` sent through `logging`)."""
    fields = vars(record)
    return _access_json(
        record.created,
        record.levelname,
        record.getMessage(),
        *(getattr(record, name, None) or var.get() for name, var in _CONTEXT.items()),
        *(fields[name] for name in ACCESS_FIELDS),
    )


def _access_json(
    created: float,
    level: str,
    message: str,
    request_id: str | None,
    job_id: str | None,
    tenant: str | None,
    route: str,
    status_code: int,
    duration_s: float,
) -> str:
    """The access line: `JsonFormatter`'s fields in its order. Only the values a request can supply are searched
    for secrets: the message (its path) and the request id (the client's X-Request-ID). The tenant is the API
    key's, from configuration, and job ids are the gateway's own."""
    entry: dict[str, Any] = {
        "ts": _timestamp(created),
        "level": level,
        "logger": ACCESS_LOGGER,
        "message": redact(message),
        "request_id": redact(request_id) if request_id else request_id,
        "job_id": job_id,
        "tenant": tenant,
        "route": route,
        "status_code": status_code,
        "duration_s": duration_s,
    }
    return _ENCODER.encode(entry)


def log_access(method: str, path: str, status_code: int, route: str, duration_s: float) -> None:
    """One request's access line (`fae.access`, INFO). Where `logging` would only hand it to this module's JSON
    handler anyway (a configured process: that handler alone on the root logger, nothing else on the way), the
    line is written to that handler's stream directly: the same line, without a LogRecord, a caller lookup and
    the filter and handler passes, which took about 10% of the gateway's CPU on a poll of a job
    (benchmarks/RESULTS.md). Anywhere else (text lines, more handlers, such as a test's log capture) it goes
    through `logging`."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler()
    if handler is not None:
        line = _access_json(
            time.time(),
            "INFO",
            f"{method} {path} {status_code}",
            request_id_var.get(),
            job_id_var.get(),
            tenant_var.get(),
            route,
            status_code,
            duration_s,
        )
        try:
            with handler.lock:  # type: ignore[union-attr]
                handler.stream.write(line + handler.terminator)
                handler.stream.flush()
        except Exception:  # reported as `logging` reports a failed write (on stderr), never raised
            handler.handleError(logging.makeLogRecord({"name": ACCESS_LOGGER, "msg": line}))
        return
    fields = {"route": route, "status_code": status_code, "duration_s": duration_s}
    _access_logger.info("%s %s %d", method, path, status_code, extra=fields)


def _sole_json_handler() -> _FaeHandler | None:
    """This module's JSON handler, if an access record would reach it and nothing else."""
    root = logging.root
    if len(root.handlers) != 1 or root.filters:
        return None
    handler = root.handlers[0]
    if type(handler) is not _FaeHandler or handler.level > logging.INFO:
        return None
    if not isinstance(handler.formatter, JsonFormatter) or [type(f) for f in handler.filters] != [
        ContextFilter
    ]:
        return None
    node: logging.Logger = _access_logger
    while node is not root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent  # type: ignore[assignment]
    return handler


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
