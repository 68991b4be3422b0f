"""Models the gateway serves, and the caller's fine-tuned adapters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from core.contract import adapter_key
from service.deps import Caller, FinetuneCaller, ServicesDep
from service.problems import not_found
from service.routes.jobs import JobId

router = APIRouter(prefix="/v1", tags=["models"])

# Adapter record fields that are internal bookkeeping, not for callers.
_INTERNAL_ADAPTER_FIELDS = frozenset({"key", "tenant"})


class ModelList(BaseModel):
    data: list[dict[str, Any]]


@router.get("/models", response_model=ModelList, summary="Models: condition type, classes, image size")
def list_models(principal: Caller, services: ServicesDep) -> ModelList:
    return ModelList(data=[model.public() for model in services.models.all()])


def public_adapter(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _INTERNAL_ADAPTER_FIELDS}


@router.get("/adapters", response_model=ModelList, summary="The caller's fine-tuned adapters")
def list_adapters(principal: Caller, services: ServicesDep) -> ModelList:
    return ModelList(data=[public_adapter(r) for r in services.store.list_adapters(principal.tenant)])


@router.delete("/adapters/{adapter_id}", status_code=204, summary="Delete an adapter and its weights")
async def delete_adapter(adapter_id: JobId, principal: FinetuneCaller, services: ServicesDep) -> Response:
    store, storage = services.store, services.storage
    record = await run_in_threadpool(store.get_adapter, principal.tenant, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    await run_in_threadpool(store.delete_adapter, principal.tenant, adapter_id)
    await run_in_threadpool(storage.delete_prefix, adapter_key(principal.tenant, adapter_id))
    return Response(status_code=204)
