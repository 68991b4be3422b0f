"""The caller's webhook signing secret (Standard Webhooks `whsec_...`), to verify deliveries, and its rotation."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from core.webhooks import rotate_secret, signing_secrets
from service.deps import Caller, ServicesDep
from service.edges import GatewayRoute
from service.schemas import WebhookSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=GatewayRoute)


@router.get("/secret", response_model=WebhookSecret, summary="The secret that signs this tenant's webhooks")
def webhook_secret(principal: Caller, services: ServicesDep) -> WebhookSecret:
    settings = services.settings
    current = signing_secrets(principal.tenant, services.store, settings.webhooks, settings.process.data_dir)
    record = services.store.get_webhook_secrets(principal.tenant)
    return WebhookSecret(
        secret=current[0], previous_valid_until=record.overlap_until(datetime.now(UTC)) if record else None
    )


@router.post(
    "/secret/rotate",
    response_model=WebhookSecret,
    summary="Rotate the secret: the old one keeps signing beside the new one for FAE_WEBHOOK_ROTATION_OVERLAP_S",
)
def rotate_webhook_secret(principal: Caller, services: ServicesDep) -> WebhookSecret:
    settings = services.settings
    record = rotate_secret(principal.tenant, services.store, settings.webhooks, settings.process.data_dir)
    return WebhookSecret(secret=record.current, previous_valid_until=record.overlap_until(datetime.now(UTC)))
