"""Models the gateway serves, and the caller's fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter, Response

from core.contract import adapter_key
from service.deps import Caller, FinetuneCaller, ServicesDep
from service.problems import not_found
from service.schemas import AdapterId, AdapterList, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="Models: condition type, classes, image size")
def list_models(principal: Caller, services: ServicesDep) -> ModelList:
    return ModelList(data=[model.public() for model in services.models.all()])


@router.get("/adapters", response_model=AdapterList, summary="The caller's fine-tuned adapters")
def list_adapters(principal: Caller, services: ServicesDep) -> AdapterList:
    return AdapterList(data=[record.info() for record in services.store.list_adapters(principal.tenant)])


@router.delete("/adapters/{adapter_id}", status_code=204, summary="Delete an adapter and its weights")
def delete_adapter(adapter_id: AdapterId, principal: FinetuneCaller, services: ServicesDep) -> Response:
    store = services.store
    if store.get_adapter(principal.tenant, adapter_id) is None:
        raise not_found("adapter", adapter_id)
    store.delete_adapter(principal.tenant, adapter_id)
    services.storage.delete_prefix(adapter_key(principal.tenant, adapter_id))
    return Response(status_code=204)
