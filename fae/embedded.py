"""Embedded mode, `fae serve --embedded`: the gateway with an in-process worker, memory job store and local
storage; no Redis, no S3.

This is the composition root's one place that puts gateway, worker and model into one process. The
settings are derived once, here, from the environment's: local storage, the shipped demo model when no model
is configured, a development API key and a development C2PA signer on first run, and the bind address as the
public URL.

Deriving them imports the model stack (seconds): `fae serve --embedded` runs `build_embedded` in the background
behind `fae.starting.StartingApp`, which answers `/healthz` at once.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from fastapi import FastAPI

from core.atomic import write_bytes_atomically
from core.jobstore import MemoryJobStore
from core.provenance import ensure_development_signer
from core.settings import Settings
from core.storage import make_storage
from service.app import create_app
from service.catalog import describe_models
from worker.embedded_queue import InProcessJobQueue

DEV_KEY_FILE = "dev-api-key"
WEBHOOK_SECRETS_FILE = "webhook-secrets.json"  # rotated webhook secrets: a restart must not undo a rotation


def dev_key(data_dir: Path) -> str:
    """The development key with every scope, created once under the data directory and reused."""
    path = data_dir / DEV_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = "fae_dev_" + secrets.token_urlsafe(24)
    write_bytes_atomically(path, (key + "\n").encode())  # mode 0600: only this user reads the key
    return key


def embedded_settings(settings: Settings) -> tuple[Settings, str | None]:
    """The embedded variant of ``settings``, and the development key when one was made for it."""
    from model.repository import default_model_dir, shipped_extra_models  # the model runs in this process

    data_dir = Path(settings.process.data_dir)
    changes: dict[str, object] = {"storage_backend": "local"}
    if not settings.catalog.models:
        models = {"default": default_model_dir(data_dir / "models"), **shipped_extra_models()}
        changes["models"] = ",".join(f"{name}={path}" for name, path in models.items())
    key = None
    if not (settings.gateway.api_keys or settings.gateway.api_keys_file):
        key = dev_key(data_dir)
        changes["api_keys"] = f"dev:{key}:generate+finetune+admin"
    if not settings.gateway.public_url:
        changes["public_url"] = f"http://{settings.gateway.host}:{settings.gateway.port}"
    provenance = settings.provenance
    if provenance.c2pa_sign_cert is None and provenance.c2pa_private_key is None:
        # Content Credentials from the first run on: a development CA and signer, named as untrusted.
        changes["c2pa_sign_cert"], changes["c2pa_private_key"] = ensure_development_signer(data_dir)
    return settings.override(**changes), key


def create_embedded_app(settings: Settings) -> FastAPI:
    """The gateway app with a memory job store (its rotated webhook secrets kept under the data directory),
    local storage and an in-process worker."""
    store = MemoryJobStore(
        settings.limits, webhook_secrets_file=Path(settings.process.data_dir) / WEBHOOK_SECRETS_FILE
    )
    storage = make_storage(settings)
    queue = InProcessJobQueue(settings, store, storage)
    return create_app(settings, job_store=store, storage=storage, job_queue=queue)


def print_welcome(settings: Settings, key: str) -> None:
    """The development key and a curl that writes an image, for the person who just ran `make run`."""
    base = settings.gateway.public_url
    models = describe_models(settings)
    text = bool(models) and models[0].condition_type == "text"
    body = '{"prompt": "red apple", "guidance_scale": 4}' if text else '{"class_label": 1}'
    name = "red-apple.png" if text else "class-1.png"
    print(
        f"\nfae-serve embedded mode on {base}\n"
        f"  development API key (stored in {Path(settings.process.data_dir) / DEV_KEY_FILE}):\n    {key}\n"
        f"  try (writes {name}, then prints the status and type: 200 image/png; a JSON answer "
        f"means the job is still running or failed: see its Content-Location):\n"
        f"    curl -sL -o {name} -w '%{{http_code}} %{{content_type}}\\n' -H 'Authorization: Bearer {key}' "
        f"-H 'Prefer: wait=60' -H 'Accept: image/png' -H 'Content-Type: application/json' "
        f"-d '{body}' {base}/v1/generate\n",
        file=sys.stderr,
        flush=True,
    )


def build_embedded(settings: Settings) -> FastAPI:
    """The embedded app from the environment's settings (imports the model stack; prints the welcome)."""
    settings, key = embedded_settings(settings)
    if key:
        print_welcome(settings, key)
    return create_embedded_app(settings)
