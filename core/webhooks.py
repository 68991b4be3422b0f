"""Webhooks: who may be called (SSRF guard), how a payload is signed (Standard Webhooks), one delivery.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{webhook-id}.{webhook-timestamp}.{body}")>`,
with the secret the base64 after `whsec_`. Each tenant has its own secret (configured, or derived from the
operator's signing key, or set by a rotation); for `FAE_WEBHOOK_ROTATION_OVERLAP_S` after a rotation the old
secret signs too, space-separated in the same header, so receivers can switch over without losing events. Each
rotation retires the secret it replaces with its own overlap, so rotating again within an overlap keeps the
older secrets signing too (at most `MAX_RETIRED_SECRETS` of them).
The worker's webhook task calls `deliver` once per attempt and retries with `retry_delay_s`; `webhook-id` is
the same on every attempt of one event, so receivers can deduplicate.

Events: `job.started`, `job.progress` (at most one per `FAE_WEBHOOK_PROGRESS_INTERVAL_S`, best effort: never
retried, and dropped once the job finished), `job.succeeded`, `job.failed`, `job.canceled`; a job gets the
ones in its request's `webhook_events`, by default the terminal ones. The payload is
`{"type", "id", "timestamp", "data": job}`, the job as `GET /v1/jobs/{id}` shows it without its webhook URL
and worker id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

from core import metrics
from core.contract import TERMINAL_WEBHOOK_EVENTS, Job, Progress, RetiredWebhookSecret, WebhookSecretRecord
from core.jobstore import WebhookSecretBook
from core.settings import WebhookSettings

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_RETIRED_SECRETS = 4  # a header carries at most this many old signatures beside the current one
_SIGNING_KEY_FILE = "webhook-signing-key"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookURLRefused(ValueError):
    """The URL is malformed or reaches an address webhooks may not call."""


# --- URL validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """A validated URL and the addresses it may be delivered to (the connection is pinned to them)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _allowlist(raw: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in filter(None, (item.strip() for item in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower().rstrip("."))
    return frozenset(hosts), tuple(networks)


# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): the IPv4 address is in the last 32 bits.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 transition form reaches: IPv4-compatible (::a.b.c.d), 6to4 (2002::/16),
    Teredo (2001::/32: server and client) and NAT64. A relay would carry the request to them, so they decide."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    found = [low32] if int(address) >> 32 == 0 or any(address in net for net in _NAT64) else []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 connection
            return _is_public(address.ipv4_mapped)
        if not all(_is_public(v4) for v4 in _embedded_ipv4(address)):
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        literal = ipaddress.ip_address(host)
        return [literal]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookURLRefused(f"webhook host {host!r} does not resolve") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def check_webhook_url(url: str, webhooks: WebhookSettings) -> WebhookTarget:
    """Resolve `url` and refuse private, loopback, link-local and other non-public addresses.

    The operator's allow-list (`FAE_WEBHOOK_ALLOWLIST`: hosts or CIDRs) admits internal receivers.
    """
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookURLRefused("webhook_url must be an http or https URL")
    if parts.username or parts.password:
        raise WebhookURLRefused("webhook_url must not carry credentials")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise WebhookURLRefused("webhook_url has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookURLRefused("webhook_url has an invalid port") from exc
    allowed_hosts, allowed_networks = _allowlist(webhooks.allowlist)
    addresses = _resolve(host, port)
    if not addresses:
        raise WebhookURLRefused(f"webhook host {host!r} does not resolve")
    if host not in allowed_hosts:
        for address in addresses:
            if not _is_public(address) and not any(address in network for network in allowed_networks):
                raise WebhookURLRefused(
                    f"webhook_url resolves to {address}, a private, loopback or link-local address; "
                    "an operator can admit it with FAE_WEBHOOK_ALLOWLIST"
                )
    return WebhookTarget(str(url), scheme, host, port, tuple(addresses))


# --- secrets and signatures --------------------------------------------------------------------------


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_bytes(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(encoded)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signatures(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<b64>` per secret, space-separated (Standard Webhooks)."""
    return " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets_)


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Receiver side, for our own tooling and docs: checks a delivery's signature and freshness."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        webhook_id, timestamp = lowered["webhook-id"], int(lowered["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, webhook_id, timestamp, body).encode()
    offered = lowered.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, signature.encode()) for signature in offered)


def _configured_secrets(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        tenant, sep, secret = item.partition(":")
        if not sep or not tenant or not secret:
            raise ValueError("FAE_WEBHOOK_SECRETS entries must look like tenant:whsec_...")
        out[tenant.strip()] = secret.strip()
    return out


@lru_cache(maxsize=8)
def _persisted_signing_key(data_dir: str) -> bytes:
    """Without FAE_WEBHOOK_SIGNING_KEY: a random key kept in data_dir (fine on one host; set it for more)."""
    path = Path(data_dir) / _SIGNING_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # fails if another process got there first: then its key wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_bytes()


def secret_for_tenant(tenant: str, webhooks: WebhookSettings, data_dir: Path) -> str:
    """The tenant's `whsec_` secret: configured in FAE_WEBHOOK_SECRETS, else derived from the signing key
    (without one: from a key kept in `data_dir`)."""
    configured = _configured_secrets(webhooks.secrets).get(tenant)
    if configured:
        return configured
    if webhooks.signing_key:
        key = webhooks.signing_key.encode()
    else:
        key = _persisted_signing_key(str(Path(data_dir).resolve()))
    derived = hmac.new(key, f"fae-webhook-secret:{tenant}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(derived).decode()


def signing_secrets(
    tenant: str, book: WebhookSecretBook, webhooks: WebhookSettings, data_dir: Path
) -> list[str]:
    """The secrets that sign the tenant's webhooks now: the current one, then each one a rotation replaced
    while its overlap lasts (newest first)."""
    record = book.get_webhook_secrets(tenant)
    if record is None:
        return [secret_for_tenant(tenant, webhooks, data_dir)]
    return record.signing(datetime.now(UTC))


def rotate_secret(
    tenant: str, book: WebhookSecretBook, webhooks: WebhookSettings, data_dir: Path
) -> WebhookSecretRecord:
    """A new secret for the tenant; the one it replaces keeps signing for `rotation_overlap_s`, and so do the
    ones earlier rotations replaced, until their own overlaps end. Atomic in the store: two rotations at once
    both count, one after the other."""
    fresh = generate_secret()

    def rotated(record: WebhookSecretRecord | None) -> WebhookSecretRecord:
        now = datetime.now(UTC)
        replaced = record.current if record else secret_for_tenant(tenant, webhooks, data_dir)
        still_signing = [r for r in (record.retired if record else []) if r.valid_until > now]
        if webhooks.rotation_overlap_s > 0:
            until = now + timedelta(seconds=webhooks.rotation_overlap_s)
            still_signing.insert(0, RetiredWebhookSecret(secret=replaced, valid_until=until))
        return WebhookSecretRecord(current=fresh, retired=still_signing[:MAX_RETIRED_SECRETS])

    return book.update_webhook_secrets(tenant, rotated)


# --- events and delivery -------------------------------------------------------------------------------

STARTED, PROGRESS = "job.started", "job.progress"


def subscribed(job: Job, event: str) -> bool:
    """Whether the job's request asked for this event type (by default: the terminal ones)."""
    wanted = job.request.get("webhook_events") or TERMINAL_WEBHOOK_EVENTS
    return bool(job.webhook_url) and event in wanted


def terminal_event(job: Job) -> str:
    return f"job.{job.status.value}"


Outcome = Literal["delivered", "error", "rejected", "refused"]


@dataclass(frozen=True)
class DeliveryOutcome:
    """One attempt's result. `retryable`: try again later; otherwise the delivery is over."""

    outcome: Outcome
    webhook_id: str
    status_code: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"

    @property
    def retryable(self) -> bool:
        return self.outcome == "error"


class EmittedEvent(BaseModel):
    """What identifies a `job.started` / `job.progress` event, captured when the worker emits it and carried in
    the webhook task's arguments: its delivery may come after the job moved on (a later step, a requeue), and
    its id, step and time stay the emitted ones."""

    attempts: int
    progress: Progress
    at: datetime

    @classmethod
    def of(cls, job: Job, event: str) -> EmittedEvent:
        at = job.started_at if event == STARTED and job.started_at else datetime.now(UTC)
        return cls(attempts=job.attempts, progress=job.progress, at=at)


def webhook_id_for(job: Job, event: str | None = None, emitted: EmittedEvent | None = None) -> str:
    """Stable across attempts of one event (one job reaching one status; a start per attempt; a step). A
    start or progress event is named by what it was when emitted (without that, an old task's message: the
    job as it is now)."""
    event = event or terminal_event(job)
    attempts = emitted.attempts if emitted else job.attempts
    if event == STARTED:
        return f"msg_{job.id}_started_{attempts}"
    if event == PROGRESS:
        step = emitted.progress.step if emitted else job.progress.step
        return f"msg_{job.id}_progress_{attempts}_{step}"
    return f"msg_{job.id}_{event.removeprefix('job.')}"


def webhook_data(job: Job) -> dict[str, object]:
    """The job as the payload shows it: without the webhook URL and the worker id (also not in the echo)."""
    data = job.model_dump(mode="json", exclude={"webhook_url", "worker_id"})
    data["request"] = {k: v for k, v in data["request"].items() if k not in ("webhook_url", "webhook_events")}
    return data


def payload_for(job: Job, event: str | None = None, emitted: EmittedEvent | None = None) -> bytes:
    """The event's body: the job as it is now, with an emitted progress event's own progress and time."""
    event = event or terminal_event(job)
    at = {STARTED: job.started_at, PROGRESS: datetime.now(UTC)}.get(event, job.finished_at)
    data = webhook_data(job)
    if emitted is not None and event in (STARTED, PROGRESS):
        at = emitted.at
        if event == PROGRESS:
            data["progress"] = emitted.progress.model_dump(mode="json")
    body = {
        "type": event,
        "id": webhook_id_for(job, event, emitted),
        "timestamp": (at or job.created_at).isoformat(),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _pinned_url(target: WebhookTarget, address: IPAddress) -> str:
    parts = urlsplit(target.url)
    host = f"[{address}]" if address.version == 6 else str(address)
    return urlunsplit((parts.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


def _host_header(target: WebhookTarget) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


def deliver(
    job: Job,
    url: str,
    secret: str | list[str],
    webhooks: WebhookSettings,
    event: str | None = None,
    emitted: EmittedEvent | None = None,
) -> DeliveryOutcome:
    """POST the job's `event` (default: its terminal status; `emitted`: what a start or progress event was when
    emitted) to `url` once, signed with each secret; the URL is validated again and the connection pinned to the
    validated address, so a DNS change between request and delivery cannot redirect it inward."""
    webhook_id = webhook_id_for(job, event, emitted)
    try:
        target = check_webhook_url(url, webhooks)
    except WebhookURLRefused as exc:
        return _record(job, DeliveryOutcome("refused", webhook_id, detail=str(exc)))
    body = payload_for(job, event, emitted)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "fae-serve-webhooks/1",
        "host": _host_header(target),
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures(
            [secret] if isinstance(secret, str) else secret, webhook_id, timestamp, body
        ),
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(timeout=webhooks.timeout_s, follow_redirects=False, trust_env=False) as client:
            response = client.post(
                _pinned_url(target, target.addresses[0]), content=body, headers=headers, extensions=extensions
            )
    except httpx.HTTPError as exc:
        return _record(job, DeliveryOutcome("error", webhook_id, detail=f"{type(exc).__name__}: {exc}"))
    status = response.status_code
    if 200 <= status < 300:
        return _record(job, DeliveryOutcome("delivered", webhook_id, status))
    if status == 410:  # the receiver says this endpoint is gone for good
        return _record(job, DeliveryOutcome("rejected", webhook_id, status, "receiver answered 410 Gone"))
    return _record(job, DeliveryOutcome("error", webhook_id, status, f"receiver answered {status}"))


def _record(job: Job, outcome: DeliveryOutcome) -> DeliveryOutcome:
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome.outcome).inc()
    logger.info(
        "webhook %s",
        outcome.outcome,
        extra={
            "job_id": job.id,
            "tenant": job.tenant,
            "request_id": job.request_id,  # the submission's: every line about a job carries it
            "status_code": outcome.status_code,
            "detail": outcome.detail,
        },
    )
    return outcome


def retry_delay_s(attempt: int, base_s: float = 5.0, cap_s: float = 3600.0) -> float:
    """Wait before the attempt after `attempt` (from 1): 5 s, 20 s, 80 s ... up to `cap_s`, ±20 % jitter."""
    delay = min(cap_s, base_s * 4 ** max(attempt - 1, 0))
    return delay * random.uniform(0.8, 1.2)
