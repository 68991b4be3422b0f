"""Starting the gateway process (uvicorn), including the embedded mode's one-time setup."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from .settings import Settings

DEV_KEY_FILE = "dev-api-key"


def ensure_dev_key(settings: Settings) -> str | None:
    """Embedded mode with no key configured: create (once) and reuse a development key with every scope."""
    if settings.api_keys or settings.api_keys_file:
        return None
    path = Path(settings.data_dir) / DEV_KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
    else:
        key = "fae_dev_" + secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
    settings.api_keys = f"dev:{key}:generate+finetune+admin"
    return key


def ensure_default_model(settings: Settings) -> None:
    """Embedded mode with no model configured: the shipped demo model, else a tiny local one."""
    if settings.models:
        return
    from model.loading import default_model_dir  # embedded mode runs the model in-process anyway

    directory = default_model_dir(Path(settings.data_dir) / "models")
    settings.models = f"default={directory}"


def run_server(settings: Settings, embedded: bool = False) -> int:
    import uvicorn

    from .app import create_app

    if embedded:
        settings.storage_backend = "local"
        ensure_default_model(settings)
        key = ensure_dev_key(settings)
        base = f"http://{settings.host}:{settings.port}"
        if not settings.public_url:
            settings.public_url = base
        if key:
            from .models import describe_models

            models = describe_models(settings)
            text = bool(models) and models[0].condition_type == "text"
            body = '{"prompt": "red apple", "guidance_scale": 4}' if text else '{"class_label": 1}'
            name = "red-apple.png" if text else "class-1.png"
            print(
                f"\nfae-serve embedded mode on {base}\n"
                f"  development API key (stored in {Path(settings.data_dir) / DEV_KEY_FILE}):\n    {key}\n"
                f"  try (writes {name}, then prints the status and type: 200 image/png; a JSON answer "
                f"means the job is still running or failed: see its Content-Location):\n"
                f"    curl -sL -o {name} -w '%{{http_code}} %{{content_type}}\\n' -H 'Authorization: Bearer {key}' "
                f"-H 'Prefer: wait=60' -H 'Accept: image/png' -H 'Content-Type: application/json' "
                f"-d '{body}' {base}/v1/generate\n",
                file=sys.stderr,
                flush=True,
            )
    app = create_app(settings, embedded=embedded)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0
