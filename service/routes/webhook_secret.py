"""The caller's webhook signing secret (Standard Webhooks `whsec_...`), to verify deliveries."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from core.webhooks import secret_for_tenant
from service.deps import Caller, ServicesDep

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str
    scheme: str = "standard-webhooks"
    headers: list[str] = ["webhook-id", "webhook-timestamp", "webhook-signature"]


@router.get("/secret", response_model=WebhookSecret, summary="The secret that signs this tenant's webhooks")
def webhook_secret(principal: Caller, services: ServicesDep) -> WebhookSecret:
    return WebhookSecret(secret=secret_for_tenant(principal.tenant, services.settings))
