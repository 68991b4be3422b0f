"""FastAPI dependencies: the app's parts (`ServicesDep`) and the caller (`Caller` and its scoped variants).

Handlers take `services: ServicesDep` for every part of the app and one caller type; nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

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


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fae-serve"'}


class ApiKeyAuth(HTTPBearer):
    """The caller's principal from its API key: 401 without a valid key, 403 without `scope` (when given).

    One dependency per route (not a chain of services, bearer and scope dependencies): FastAPI resolves every
    dependency on every request. It stays an `HTTPBearer`, so OpenAPI documents the scheme as before. Async,
    so the tenant it binds stays in the request's logging context."""

    def __init__(self, scope: str | None = None) -> None:
        super().__init__(
            scheme_name="HTTPBearer",
            auto_error=False,
            description="An API key: `Authorization: Bearer <key>`.",
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None or not credentials.credentials:
            raise ProblemError(
                401,
                "Unauthorized",
                "send an API key as `Authorization: Bearer <key>`",
                "unauthorized",
                _CHALLENGE,
            )
        services: Services = request.app.state.services
        principal = services.keys.authenticate(credentials.credentials)
        if principal is None:
            raise ProblemError(401, "Unauthorized", "the API key is not valid", "unauthorized", _CHALLENGE)
        set_context(tenant=principal.tenant)
        if self.scope is not None and not principal.has(self.scope):
            raise missing_scope(self.scope)
        return principal


def missing_scope(scope: str) -> ProblemError:
    return ProblemError(
        403, "Forbidden", f"this API key lacks the `{scope}` scope", "missing-scope", required_scope=scope
    )


Caller = Annotated[Principal, Depends(ApiKeyAuth())]
GenerateCaller = Annotated[Principal, Depends(ApiKeyAuth("generate"))]
FinetuneCaller = Annotated[Principal, Depends(ApiKeyAuth("finetune"))]
AdminCaller = Annotated[Principal, Depends(ApiKeyAuth("admin"))]
ServicesDep = Annotated[Services, Depends(get_services)]
