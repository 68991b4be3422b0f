"""FastAPI dependencies: the app's parts (settings, store, storage, queue, models) and authentication."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import ApiKeyRegistry, Principal
from service.jobstore import JobStore
from service.logging import set_context
from service.models import ModelCatalog
from service.problems import ProblemError
from service.queue import JobQueue
from service.settings import Settings
from service.storage import Storage


@dataclass
class Services:
    settings: Settings
    store: JobStore
    storage: Storage
    queue: JobQueue
    keys: ApiKeyRegistry
    models: ModelCatalog
    embedded: bool


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings_dep(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


def get_store(services: Annotated[Services, Depends(get_services)]) -> JobStore:
    return services.store


def get_storage(services: Annotated[Services, Depends(get_services)]) -> Storage:
    return services.storage


def get_queue(services: Annotated[Services, Depends(get_services)]) -> JobQueue:
    return services.queue


def get_models(services: Annotated[Services, Depends(get_services)]) -> ModelCatalog:
    return services.models


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


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits keys holding `scope` (403 otherwise)."""

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.has(scope):
            raise ProblemError(
                403,
                "Forbidden",
                f"this API key lacks the `{scope}` scope",
                "missing-scope",
                required_scope=scope,
            )
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


Caller = Annotated[Principal, Depends(authenticate)]
GenerateCaller = Annotated[Principal, Depends(require("generate"))]
FinetuneCaller = Annotated[Principal, Depends(require("finetune"))]
AdminCaller = Annotated[Principal, Depends(require("admin"))]
ServicesDep = Annotated[Services, Depends(get_services)]
