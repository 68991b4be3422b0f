"""Server-sent events (the WHATWG event-stream format), parsed line by line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


@dataclass
class SSEParser:
    """Feed it lines (without their line ending); it returns an event at each blank line that ends one."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _retry_ms: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event, data, self._event, self._data = self._event, self._data, "", []
        retry_ms, self._retry_ms = self._retry_ms, None
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self._id, retry_ms)
