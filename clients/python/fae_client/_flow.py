"""How one implementation serves both the sync and the async client.

Every operation (`_core.Core`) is written once, as a generator that *yields* what it needs done (send a request,
sleep, read a line of a streamed answer, hand a value to the caller) and receives the result. It never does I/O
itself. Two small drivers run such a flow: `SyncDriver` with an `httpx.Client` and `time.sleep`, `AsyncDriver`
with an `httpx.AsyncClient` and `asyncio.sleep`. Request building, response parsing, retries, polling and
server-sent-event parsing therefore exist once; the drivers are the only code that differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send `request`; the flow receives the `httpx.Response` (body read unless `stream`), or the
    `httpx.TransportError` is thrown into it."""

    request: httpx.Request
    stream: bool = False


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Read:
    """Read a streamed response's whole body."""

    response: httpx.Response


@dataclass(frozen=True)
class ReadLine:
    """The next line of a streamed response, or None at its end."""

    response: httpx.Response


@dataclass(frozen=True)
class Close:
    response: httpx.Response


@dataclass(frozen=True)
class Emit:
    """A value for the caller of a streaming operation (e.g. one server-sent event)."""

    value: Any


Action = Send | Sleep | Read | ReadLine | Close | Emit
Flow = Generator[Action, Any, T]


class SyncDriver:
    def __init__(self, http: httpx.Client, sleep: Callable[[float], None] = time.sleep) -> None:
        self.http, self.sleep = http, sleep

    def run(self, flow: Flow[T]) -> T:
        """Run a flow to its result (a flow that emits values is a stream: use `iterate`)."""
        stream = self.iterate(flow)
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value
        stream.close()
        raise RuntimeError("a streaming operation was run as a call")

    def iterate(self, flow: Flow[T]) -> Generator[Any, None, T]:
        lines: dict[int, Iterator[str]] = {}
        opened: list[httpx.Response] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    action = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                if isinstance(action, Emit):
                    yield action.value
                    continue
                try:
                    value = self._perform(action, lines, opened)
                except httpx.TransportError as exc:  # the flow decides: retry, reconnect or raise
                    error = exc
        finally:
            flow.close()
            for response in opened:
                response.close()

    def _perform(self, action: Action, lines: dict[int, Iterator[str]], opened: list[httpx.Response]) -> Any:
        match action:
            case Send(request, stream):
                response = self.http.send(request, stream=stream)
                if stream:
                    opened.append(response)
                return response
            case Sleep(seconds):
                self.sleep(seconds)
            case Read(response):
                return response.read()
            case ReadLine(response):
                iterator = lines.setdefault(id(response), response.iter_lines())
                return next(iterator, None)
            case Close(response):
                lines.pop(id(response), None)
                response.close()
        return None


class AsyncDriver:
    def __init__(
        self, http: httpx.AsyncClient, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.http, self.sleep = http, sleep

    async def run(self, flow: Flow[T]) -> T:
        async with contextlib.aclosing(self._drive(flow)) as steps:
            async for kind, value in steps:
                if kind == "result":
                    return value
                raise RuntimeError("a streaming operation was run as a call")
        raise AssertionError("unreachable: a flow always ends with a result")

    async def iterate(self, flow: Flow[Any]) -> AsyncIterator[Any]:
        async with contextlib.aclosing(self._drive(flow)) as steps:
            async for kind, value in steps:
                if kind == "emit":
                    yield value

    async def _drive(self, flow: Flow[Any]) -> AsyncIterator[tuple[str, Any]]:
        lines: dict[int, AsyncIterator[str]] = {}
        opened: list[httpx.Response] = []
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    action = flow.throw(error) if error is not None else flow.send(value)
                except StopIteration as stop:
                    yield "result", stop.value
                    return
                value, error = None, None
                if isinstance(action, Emit):
                    yield "emit", action.value
                    continue
                try:
                    value = await self._perform(action, lines, opened)
                except httpx.TransportError as exc:
                    error = exc
        finally:
            flow.close()
            for response in opened:
                await response.aclose()

    async def _perform(
        self, action: Action, lines: dict[int, AsyncIterator[str]], opened: list[httpx.Response]
    ) -> Any:
        match action:
            case Send(request, stream):
                response = await self.http.send(request, stream=stream)
                if stream:
                    opened.append(response)
                return response
            case Sleep(seconds):
                await self.sleep(seconds)
            case Read(response):
                return await response.aread()
            case ReadLine(response):
                iterator = lines.setdefault(id(response), response.aiter_lines())
                return await anext(iterator, None)
            case Close(response):
                lines.pop(id(response), None)
                await response.aclose()
        return None
