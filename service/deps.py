"""FastAPI dependencies: the app's parts (`ServicesDep`) and the caller (`Caller` and its scoped variants).

Handlers take `services: ServicesDep` for every part of the app and one caller type; nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.jobqueue import JobQueue
from core.jobstore import JobStore
from core.logs import set_context
from core.settings import Settings
from core.storage import Storage
from service.auth import ApiKeyRegistry, Principal
from service.catalog import ModelCatalog
from service.datasets import UploadSlots
from service.problems import ProblemError


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Storage
    queue: JobQueue
    keys: ApiKeyRegistry
    models: ModelCatalog
    uploads: UploadSlots


async def get_services(request: Request) -> Services:
    """Async so FastAPI calls it on the event loop: a sync dependency costs a thread-pool hop per request."""
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fae-serve"'}


async def authenticate(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller's principal; 401 without a valid key. Async, so the tenant it binds stays in the request's
    logging context."""
    if credentials is None or not credentials.credentials:
        raise ProblemError(
            401,
            "Unauthorized",
            "send an API key as `Authorization: Bearer <key>`",
            "unauthorized",
            _CHALLENGE,
        )
    principal = services.keys.authenticate(credentials.credentials)
    if principal is None:
        raise ProblemError(401, "Unauthorized", "the API key is not valid", "unauthorized", _CHALLENGE)
    set_context(tenant=principal.tenant)
    return principal


def missing_scope(scope: str) -> ProblemError:
    return ProblemError(
        403, "Forbidden", f"this API key lacks the `{scope}` scope", "missing-scope", required_scope=scope
    )


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits keys holding `scope` (403 otherwise)."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.has(scope):
            raise missing_scope(scope)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


Caller = Annotated[Principal, Depends(authenticate)]
GenerateCaller = Annotated[Principal, Depends(require("generate"))]
FinetuneCaller = Annotated[Principal, Depends(require("finetune"))]
AdminCaller = Annotated[Principal, Depends(require("admin"))]
ServicesDep = Annotated[Services, Depends(get_services)]
