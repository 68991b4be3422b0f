"""The one settings object: every knob is an environment variable with the ``FAE_`` prefix.

Gateway, worker and CLI all read configuration through :func:`get_settings`; nothing else reads
``os.environ`` for ``FAE_`` variables. Sections are grouped by the part of the system that uses them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAE_", extra="ignore", frozen=False)

    # --- process -------------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    # Where embedded mode and local storage keep their files.
    data_dir: Path = Path("var")
    # Embedded mode: in-process worker, memory job store, local storage (what `fae serve --embedded` sets).
    embedded: bool = False

    # --- models ---------------------------------------------------------------------------------------
    # Comma-separated `name=directory` pairs of FAEPipeline repositories; the first is the default.
    # Empty: embedded mode creates (or reuses) a local model under data_dir/models.
    models: str = ""
    default_model: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    # --- queue and job store (Redis) -----------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Prefix of every job-store key, so several deployments (or test runs) can share one Redis.
    redis_namespace: str = Field(default="fae", min_length=1, max_length=64)

    # --- storage --------------------------------------------------------------------------------------
    storage_backend: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "fae-outputs"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_path_style: bool = True
    # Endpoint that callers reach for presigned URLs when it differs from the one the service uses.
    s3_public_endpoint_url: str | None = None
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    # Public base URL of this gateway (used to build download URLs for the local backend).
    public_url: str = ""

    # --- gateway: auth, limits, webhooks --------------------------------------------------------------
    # `tenant:key[:scope+scope],...`; scopes are generate, finetune, admin (default generate+finetune).
    api_keys: str = ""
    api_keys_file: Path | None = None
    max_inflight_per_tenant: int = Field(default=32, ge=1)
    rate_limit_per_minute: int = Field(default=600, ge=1)
    max_queue_depth: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_wait_s: float = Field(default=60.0, ge=0)
    # Comma-separated hosts or CIDRs that webhooks may reach even though they are private/loopback.
    webhook_allowlist: str = ""
    # `tenant:secret,...` (Standard Webhooks `whsec_` base64 secrets); tenants without one get a secret
    # derived from webhook_signing_key.
    webhook_secrets: str = ""
    webhook_signing_key: str = ""
    webhook_max_attempts: int = Field(default=8, ge=1)
    # Backoff before retry n is base * 4**(n-1) seconds (±20 %), capped at an hour.
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Longest a `GET /v1/jobs/{id}/events` stream stays open; clients reconnect past it.
    events_max_s: float = Field(default=600.0, gt=0)

    # --- worker ---------------------------------------------------------------------------------------
    worker_queues: str = "generate,finetune"
    # A running job's lease, renewed every heartbeat_s; a dead worker's job is requeued within
    # lease_s + reaper_interval_s (under a minute by default) and dead-lettered after max_deliveries.
    lease_s: float = Field(default=45.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    max_deliveries: int = Field(default=3, ge=1)
    visibility_timeout_s: int = Field(default=6 * 3600, ge=60)
    result_expires_s: int = Field(default=3600, ge=60)
    compile: bool = False
    cuda_graphs: bool = False
    compile_cache_dir: Path | None = None
    max_batch_size: int = Field(default=32, ge=1)
    # LoRA slots per model (slot 0 is "no adapter"): adapters switch and mix within one batch without a
    # recompile; adapters above adapter_max_rank are refused. 0 keeps the peft path (one adapter per batch).
    adapter_slots: int = Field(default=8, ge=0)
    adapter_max_rank: int = Field(default=32, ge=1)
    # The worker's own small HTTP server: /healthz, /readyz (model loaded and warmed), /metrics.
    worker_http_port: int = Field(default=9101, ge=0, le=65535)
    # Directory holding Prometheus multi-process files (PROMETHEUS_MULTIPROC_DIR is set from it).
    metrics_dir: Path | None = None
    # Progress writes to the job store at most this often (the final step is always written).
    progress_interval_s: float = Field(default=0.25, ge=0)
    # The cancel flag is read from the job store at most this often while denoising.
    cancel_poll_s: float = Field(default=0.1, ge=0)
    # Where a worker keeps downloaded adapters and fine-tune datasets.
    worker_scratch_dir: Path | None = None
    # TEST-ONLY hooks, never set in production: a job whose prompt equals test_crash_on_prompt SIGKILLs its
    # worker (a poison job); test_step_delay_s sleeps after each denoising step (to act on a job mid-flight).
    test_crash_on_prompt: str = ""
    test_step_delay_s: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"FAE_HEARTBEAT_S ({self.heartbeat_s}) must be shorter than FAE_LEASE_S ({self.lease_s}), "
                "or every running job would be reaped"
            )
        return self

    def model_dirs(self) -> dict[str, Path]:
        """`models` parsed into an ordered name → directory mapping."""
        out: dict[str, Path] = {}
        for item in filter(None, (s.strip() for s in self.models.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"FAE_MODELS entry {item!r} is not of the form name=directory")
            out[name.strip()] = Path(path.strip())
        return out


@lru_cache
def get_settings() -> Settings:
    return Settings()
