"""The gateway's asyncio Redis clients: one deadline per call, not one Task per command.

A redis-py asyncio client made with a `socket_timeout` (redis-py 8 sets 5 s when none is given) wraps every
write in `asyncio.wait_for`, which on Python 3.11 makes a Task for each command: about 15 µs of the gateway's
CPU per Redis call on its hottest routes (benchmarks/RESULTS.md, issue 13). These clients have no socket
timeout; `bounded` puts one `asyncio.timeout` around a whole call instead (write and read, a script's
reply included) and reports a miss as redis-py does, with `redis.TimeoutError` (the gateway's 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import redis
import redis.asyncio as aioredis

T = TypeVar("T")


def loop_client(url: str, decode_responses: bool = False) -> aioredis.Redis:
    """A client for the running event loop: connects within 5 s, and leaves call deadlines to `bounded`."""
    return aioredis.Redis.from_url(
        url, decode_responses=decode_responses, socket_timeout=None, socket_connect_timeout=5
    )


async def bounded(call: Awaitable[T], timeout_s: float) -> T:
    """`call`'s result, or `redis.TimeoutError` once `timeout_s` have passed without one."""
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError as exc:
        raise redis.TimeoutError(f"Redis did not answer within {timeout_s:g} s") from exc
