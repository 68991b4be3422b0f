"""Request edges every route shares: unknown query parameters are refused (by `GatewayRoute`, the class of
every route), `Prefer: respond-async` is read, a `traceparent` header is checked before it is stored on a job.

(Invalid JSON bodies (400) and the wrong Content-Type (415) are answered by `service.problems`, where
FastAPI's validation errors arrive.)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.validation import invalid

_PREFER_ASYNC = re.compile(r"(?:^|[,;\s])respond-async(?=$|[,;\s])", re.IGNORECASE)
# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; the all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

_QUERY_NAMES = "_fae_query_names"  # cached on each route object


def declared_query(route: APIRoute) -> frozenset[str]:
    """The query parameters a route (and its dependencies) declares, by their names on the wire."""
    names: frozenset[str] | None = getattr(route, _QUERY_NAMES, None)
    if names is None:
        found: set[str] = set()
        pending = [route.dependant]
        while pending:  # the route's own parameters and every dependency's
            dependant = pending.pop()
            found.update(param.alias for param in dependant.query_params)
            pending.extend(dependant.dependencies)
        names = frozenset(found)
        setattr(route, _QUERY_NAMES, names)
    return names


class GatewayRoute(APIRoute):
    """The class of every gateway route (each router's `route_class`): refuses unknown query parameters before
    anything else runs. The route checks this itself, rather than an app-wide dependency, because FastAPI
    resolves each dependency again on every request (about 10 µs each, on every poll of a job)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if request.scope.get("query_string"):
                reject_unknown_query(request)
            return await handler(request)

        return route


def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take (`?status=succeeded` on a route without that filter
    would otherwise answer as if it had been applied)."""
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = declared_query(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        problem = invalid(unknown[0], f"unknown query parameter (this route takes: {accepted})")
        problem.extensions["errors"] = [
            {"loc": ["query", name], "msg": "unknown query parameter", "type": "extra_forbidden"}
            for name in unknown
        ]
        raise problem


def prefers_async(prefer: str | None) -> bool:
    """`Prefer: respond-async` (RFC 7240): answer 202 at once, even when `wait` is asked for too."""
    return bool(prefer) and _PREFER_ASYNC.search(prefer or "") is not None


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a well-formed W3C `traceparent`, else None (a malformed one is not propagated)."""
    if value and len(value) == 55 and _TRACEPARENT.match(value):
        return value
    return None
