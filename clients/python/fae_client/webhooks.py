"""Verifying webhook deliveries (Standard Webhooks, as the server signs them).

The server sends `webhook-id`, `webhook-timestamp` and `webhook-signature` headers; the signature is
`v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`, the secret being the base64 after `whsec_`.
During a secret rotation the header holds several space-separated signatures: any one that matches will do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from fae_client.errors import WebhookVerificationError
from fae_client.types import WebhookEvent

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


def _secret_bytes(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError("the secret is not a `whsec_` base64 secret") from exc


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> WebhookEvent:
    """The delivery's event, once its signature and timestamp check out; `WebhookVerificationError` otherwise.
    Pass the raw body exactly as received (before any JSON parsing) and the headers in any letter case."""
    raw = body.encode() if isinstance(body, str) else body
    lowered = {key.lower(): value for key, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    offered = lowered.get("webhook-signature", "").split()
    if not webhook_id or not stamp or not offered:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not a number") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s away from now")
    signed = f"{webhook_id}.{timestamp}.".encode() + raw
    expected = base64.b64encode(hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest())
    matches = [
        hmac.compare_digest(expected, signature.encode())
        for version, _, signature in (item.partition(",") for item in offered)
        if version == "v1"
    ]
    if not any(matches):
        raise WebhookVerificationError("no webhook-signature matches this secret")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise WebhookVerificationError("the body is not JSON") from exc
    payload.setdefault("id", webhook_id)
    return WebhookEvent.model_validate(payload)
