"""Models the gateway serves, and the caller's fine-tuned adapters."""

from __future__ import annotations

from fastapi import APIRouter, Response

from core.contract import adapter_key, dataset_key
from service.deps import Caller, FinetuneCaller, ServicesDep
from service.edges import GatewayRoute
from service.problems import not_found
from service.schemas import AdapterId, AdapterList, Model, ModelList

router = APIRouter(prefix="/v1", tags=["models"], route_class=GatewayRoute)


@router.get(
    "/models",
    response_model=ModelList,
    summary="Models: version, fingerprint, condition type, classes, image size",
)
def list_models(principal: Caller, services: ServicesDep) -> ModelList:
    return ModelList(data=[Model.model_validate(model.public()) for model in services.models.all()])


@router.get("/adapters", response_model=AdapterList, summary="The caller's fine-tuned adapters")
def list_adapters(principal: Caller, services: ServicesDep) -> AdapterList:
    return AdapterList(data=[record.info() for record in services.store.list_adapters(principal.tenant)])


@router.delete(
    "/adapters/{adapter_id}",
    status_code=204,
    summary="Delete an adapter, its weights and the dataset uploaded to train it",
)
def delete_adapter(adapter_id: AdapterId, principal: FinetuneCaller, services: ServicesDep) -> Response:
    store, storage, tenant = services.store, services.storage, principal.tenant
    record = store.get_adapter(tenant, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    # Storage first: an outage (503) leaves the record, so the delete can be sent again.
    storage.delete_prefix(adapter_key(tenant, adapter_id))
    if record.job_id:
        storage.delete_prefix(dataset_key(tenant, record.job_id))
    store.delete_adapter(tenant, adapter_id)
    return Response(status_code=204)
