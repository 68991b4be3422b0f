"""The caller's webhook signing secret (Standard Webhooks `whsec_...`), to verify deliveries."""

from __future__ import annotations

from fastapi import APIRouter

from core.webhooks import secret_for_tenant
from service.deps import Caller, ServicesDep
from service.schemas import WebhookSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecret, summary="The secret that signs this tenant's webhooks")
def webhook_secret(principal: Caller, services: ServicesDep) -> WebhookSecret:
    settings = services.settings
    return WebhookSecret(
        secret=secret_for_tenant(principal.tenant, settings.webhooks, settings.process.data_dir)
    )
