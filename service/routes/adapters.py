"""One fine-tuned adapter: its record, and its weights in peft's format to take away (listing and deleting
adapters live beside the models, in `models.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from core.contract import AdapterInfo, AdapterRecord
from service.adapter_export import AdapterExportError, peft_zip
from service.deps import Caller, ServicesDep
from service.edges import GatewayRoute
from service.problems import ProblemError, not_found
from service.schemas import AdapterId

router = APIRouter(prefix="/v1/adapters", tags=["models"], route_class=GatewayRoute)


def owned_adapter(services: ServicesDep, tenant: str, adapter_id: str) -> AdapterRecord:
    record = services.store.get_adapter(tenant, adapter_id)
    if record is None:
        raise not_found("adapter", adapter_id)
    return record


@router.get("/{adapter_id}", response_model=AdapterInfo, summary="One of the caller's adapters")
def get_adapter(adapter_id: AdapterId, principal: Caller, services: ServicesDep) -> AdapterInfo:
    return owned_adapter(services, principal.tenant, adapter_id).info()


@router.get(
    "/{adapter_id}/download",
    response_class=Response,
    summary="The adapter in peft's format: a zip of adapter_config.json and adapter_model.safetensors",
    responses={
        200: {"content": {"application/zip": {}}, "description": "Load it with `PeftModel.from_pretrained`."}
    },
)
def download_adapter(adapter_id: AdapterId, principal: Caller, services: ServicesDep) -> Response:
    record = owned_adapter(services, principal.tenant, adapter_id)
    try:
        archive = peft_zip(record, services.storage)
    except AdapterExportError as exc:
        raise ProblemError(
            409, "Conflict", f"adapter {adapter_id!r} cannot be exported: {exc}", "adapter-unexportable"
        ) from exc
    disposition = f'attachment; filename="{adapter_id}-peft.zip"'
    return Response(archive, media_type="application/zip", headers={"Content-Disposition": disposition})
