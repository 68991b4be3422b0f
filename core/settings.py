"""The one settings object: every knob is an environment variable with the ``FAE_`` prefix.

Settings come in named groups, one per part of the system (process, gateway, catalog, redis, limits, storage,
webhooks, worker, engine, provenance); each component receives only the group it uses. Every group is frozen: a variant
(embedded mode, a test) is derived with :meth:`Settings.override`, never by assignment. The environment
variable of a field is ``FAE_`` + its name, or its ``validation_alias`` where the group makes the name shorter
(``settings.redis.url`` is ``FAE_REDIS_URL``). The README's settings table is rendered from the field
descriptions by :func:`settings_table` (a test keeps the two equal).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FAE_"


class _Group(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )


class ProcessSettings(_Group):
    """What every process (gateway, worker, CLI) shares."""

    log_level: str = Field("INFO", description="log level of every process")
    log_json: bool = Field(
        True, description="structured JSON logs (job id and tenant on every line; no secret is logged)"
    )
    data_dir: Path = Field(Path("var"), description="where embedded mode and local storage keep their files")
    metrics_dir: Path | None = Field(
        None, description="Prometheus multi-process directory (sets `PROMETHEUS_MULTIPROC_DIR`)"
    )
    gc_freeze: bool = Field(
        True,
        description="once started, move the process's long-lived objects out of Python's full garbage "
        "collections (`gc.freeze`; each full pass otherwise stops a gateway for about 50 ms); off only where "
        "one process builds many apps, like the test suite",
    )


class GatewaySettings(_Group):
    """The HTTP gateway: where it listens, who may call it, how large and long a request may be."""

    host: str = Field(
        "127.0.0.1", description="bind address of the gateway (and of the worker's probe server)"
    )
    port: int = Field(8000, description="gateway port")
    workers: int = Field(
        1,
        ge=1,
        validation_alias="FAE_GATEWAY_WORKERS",
        description="gateway processes sharing the port (`fae serve --workers`; more than one needs the Redis "
        "job store, and `/metrics` then merges every process through `FAE_METRICS_DIR`, or a temporary one)",
    )
    public_url: str = Field("", description="the gateway's public base URL (download links of local storage)")
    api_keys: str = Field(
        "", description="`tenant:key[:scope+scope],...` (scopes generate, finetune, admin); kept hashed"
    )
    api_keys_file: Path | None = Field(None, description="a file of API keys in the same form, one per line")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest JSON request body (413 past it)")
    max_upload_bytes: int = Field(
        512 * 1024 * 1024,
        ge=1024,
        description="largest fine-tune upload, and its unpacked size (413 past it)",
    )
    max_dataset_file_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest one dataset file, also unpacked from a zip (413 past it)",
    )
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="most pixels in one dataset image, checked before decoding (422 past it)",
    )
    max_concurrent_uploads: int = Field(
        2,
        ge=1,
        description="fine-tune uploads one gateway process unpacks at once (503 with Retry-After past it)",
    )
    max_wait_s: float = Field(60.0, ge=0, description="longest `Prefer: wait=N` a request may hold")
    events_max_s: float = Field(
        600.0, gt=0, description="longest a `/v1/jobs/{id}/events` stream stays open (clients reconnect)"
    )


class CatalogSettings(_Group):
    """Which models the service offers."""

    models: str = Field(
        "",
        description="`name[@version]=/dir,...` FAEPipeline repositories, the first the default; a name listed again with another version keeps that version loaded for jobs that pin it (embedded, empty: the shipped demo model)",
    )
    default_model: str = Field("", description="the model a request without `model` gets")
    model_source: str = Field(
        "",
        description="where `fae models pull` fetches a model when given no SOURCE: `s3://bucket/prefix` "
        "(read with the FAE_S3_* endpoint and credentials), an `https://` base URL, or a directory",
    )

    def model_entries(self) -> list[tuple[str, str | None, Path]]:
        """`models` parsed into (name, version label or None, directory), in order; `name@version=/dir`
        labels a version, and a name may be listed once per version (its first entry is the current one)."""
        out: list[tuple[str, str | None, Path]] = []
        for item in filter(None, (s.strip() for s in self.models.split(","))):
            label, sep, path = item.partition("=")
            name, at, version = (part.strip() for part in label.partition("@"))
            if not sep or not name or not path.strip() or (at and not version):
                raise ValueError(f"FAE_MODELS entry {item!r} is not of the form name[@version]=directory")
            if any(n == name and (v == (version or None) or not at) for n, v, _ in out):
                raise ValueError(
                    f"FAE_MODELS lists {label.strip()!r} twice (label each version: name@version)"
                )
            out.append((name, version or None, Path(path.strip())))
        return out

    def model_dirs(self) -> dict[str, Path]:
        """Engine key → directory: a name's current (first) entry under the name, each older version under
        `name@version`."""
        out: dict[str, Path] = {}
        for name, version, path in self.model_entries():
            out[f"{name}@{version}" if name in out else name] = path
        return out


class RedisSettings(_Group):
    """The job store, limits and Celery broker."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias="FAE_REDIS_URL",
        description="job store and Celery broker",
    )
    namespace: str = Field(
        "fae",
        min_length=1,
        max_length=64,
        validation_alias="FAE_REDIS_NAMESPACE",
        description="prefix of every job-store key (several deployments or test runs can share one Redis)",
    )


class LimitsSettings(_Group):
    """Admission limits and lifetimes of stored records."""

    max_inflight_per_tenant: int = Field(
        32, ge=1, description="queued + running jobs per tenant (429 past it)"
    )
    rate_limit_per_minute: int = Field(
        600, ge=1, description="submissions per tenant and minute (429 past it)"
    )
    max_queue_depth: int = Field(1000, ge=1, description="jobs waiting in a queue before new ones get 503")
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long a job record is kept")
    idempotency_ttl_s: int = Field(
        24 * 3600, ge=60, description="how long an `Idempotency-Key` is remembered"
    )


class StorageSettings(_Group):
    """Where inputs and outputs live: local files or S3."""

    backend: Literal["local", "s3"] = Field(
        "local", validation_alias="FAE_STORAGE_BACKEND", description="`local` or `s3`"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint the service uses")
    s3_public_endpoint_url: str | None = Field(
        None, description="S3 endpoint that clients reach, when it differs (presigned URLs are signed for it)"
    )
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_bucket: str = Field("fae-outputs", description="S3 bucket")
    s3_access_key_id: str | None = Field(None, description="S3 access key id")
    s3_secret_access_key: str | None = Field(None, description="S3 secret key (never logged)")
    s3_path_style: bool = Field(True, description="path-style S3 addressing")
    presign_expiry_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="lifetime of presigned and signed download URLs"
    )
    output_retention_days: float = Field(
        30.0,
        ge=0,
        description="days a job's images stay in storage before the retention sweep deletes them (0: forever)",
    )
    dataset_retention_days: float = Field(
        30.0, ge=0, description="days an uploaded fine-tune dataset stays in storage (0: forever)"
    )
    tenant_retention: str = Field(
        "",
        description="`tenant=output_days/dataset_days,...`: retention of some tenants, overriding the two above",
    )
    delete_dataset_after_training: bool = Field(
        False,
        description="delete an uploaded dataset once its fine-tune succeeded (always: with its adapter)",
    )
    retention_sweep_s: float = Field(
        3600.0,
        gt=0,
        description="how often one worker (whichever claims the interval) deletes outputs and datasets past their retention",
    )
    storage_retry_s: float = Field(
        120.0,
        ge=0,
        description="how long a worker retries writing a finished job's outputs while storage is down "
        "(the job then fails with reason `storage_unavailable`)",
    )

    @model_validator(mode="after")
    def _check_tenant_retention(self) -> StorageSettings:
        self.tenant_retentions()  # a malformed entry fails at start, not in the sweep
        return self

    def tenant_retentions(self) -> dict[str, tuple[float, float]]:
        """`tenant_retention` parsed: tenant → (output days, dataset days)."""
        out: dict[str, tuple[float, float]] = {}
        for entry in filter(None, (item.strip() for item in self.tenant_retention.split(","))):
            tenant, _, days = entry.partition("=")
            output_days, _, dataset_days = days.partition("/")
            try:
                periods = (float(output_days), float(dataset_days))
            except ValueError:
                periods = (-1.0, -1.0)
            if not tenant.strip() or min(periods) < 0:
                raise ValueError(
                    f"FAE_TENANT_RETENTION entry {entry!r} is not tenant=output_days/dataset_days"
                )
            out[tenant.strip()] = periods
        return out

    def retention_days(self, tenant: str) -> tuple[float, float]:
        """(output days, dataset days) for `tenant`; 0 keeps forever."""
        return self.tenant_retentions().get(tenant, (self.output_retention_days, self.dataset_retention_days))


class WebhookSettings(_Group):
    """Where webhooks may go, how they are signed and retried."""

    allowlist: str = Field(
        "",
        validation_alias="FAE_WEBHOOK_ALLOWLIST",
        description="hosts or CIDRs webhooks may reach although private or loopback",
    )
    secrets: str = Field(
        "",
        validation_alias="FAE_WEBHOOK_SECRETS",
        description="`tenant:whsec_...,...` per-tenant secrets (else derived from the signing key)",
    )
    signing_key: str = Field(
        "",
        validation_alias="FAE_WEBHOOK_SIGNING_KEY",
        description="operator key that tenant secrets derive from",
    )
    max_attempts: int = Field(
        8, ge=1, validation_alias="FAE_WEBHOOK_MAX_ATTEMPTS", description="delivery attempts per webhook"
    )
    retry_base_s: float = Field(
        5.0,
        gt=0,
        validation_alias="FAE_WEBHOOK_RETRY_BASE_S",
        description="backoff before retry n is base · 4^(n−1) s (±20 %), capped at an hour",
    )
    timeout_s: float = Field(
        10.0, gt=0, validation_alias="FAE_WEBHOOK_TIMEOUT_S", description="timeout of one delivery"
    )
    rotation_overlap_s: float = Field(
        86400.0,
        ge=0,
        validation_alias="FAE_WEBHOOK_ROTATION_OVERLAP_S",
        description="after a secret rotation, how long the old secret still signs beside the new one",
    )
    progress_interval_s: float = Field(
        5.0,
        gt=0,
        validation_alias="FAE_WEBHOOK_PROGRESS_INTERVAL_S",
        description="at most one `job.progress` webhook per job this often",
    )


class WorkerSettings(_Group):
    """A worker process: its queues, leases, progress writes and scratch space."""

    queues: str = Field(
        "generate,finetune", validation_alias="FAE_WORKER_QUEUES", description="queues a worker consumes"
    )
    http_port: int = Field(
        9101,
        ge=0,
        le=65535,
        validation_alias="FAE_WORKER_HTTP_PORT",
        description="the worker's `/healthz`, `/readyz` and `/metrics` port (0: none)",
    )
    concurrency: int = Field(
        8,
        ge=1,
        le=256,
        validation_alias="FAE_WORKER_CONCURRENCY",
        description="jobs one worker holds at once (their denoising steps share generator calls); the queue holds the rest",
    )
    lease_s: float = Field(45.0, gt=0, description="a running job's lease, renewed every heartbeat")
    heartbeat_s: float = Field(10.0, gt=0, description="lease renewal interval (shorter than the lease)")
    reaper_interval_s: float = Field(
        10.0, gt=0, description="how often expired leases are requeued (a dead worker's job: lease + this)"
    )
    max_deliveries: int = Field(3, ge=1, description="deliveries of a job before it is dead-lettered")
    visibility_timeout_s: int = Field(6 * 3600, ge=60, description="Celery's broker visibility timeout")
    result_expires_s: int = Field(3600, ge=60, description="Celery result expiry")
    progress_interval_s: float = Field(
        0.25, ge=0, description="progress is written at most this often (the final step always)"
    )
    cancel_poll_s: float = Field(0.1, ge=0, description="the cancel flag is read at most this often")
    scratch_dir: Path | None = Field(
        None,
        validation_alias="FAE_WORKER_SCRATCH_DIR",
        description="downloaded adapters and fine-tune datasets (default: a temporary directory)",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> WorkerSettings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"FAE_HEARTBEAT_S ({self.heartbeat_s}) must be shorter than FAE_LEASE_S ({self.lease_s}), "
                "or every running job would be reaped"
            )
        return self


class EngineSettings(_Group):
    """The model engine on a worker's device."""

    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N`")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype (auto: bf16 on a GPU)"
    )
    compile: bool = Field(False, description="torch.compile the generator and decoders")
    cuda_graphs: bool = Field(False, description="replay CUDA graphs per batch-size bucket")
    compile_cache_dir: Path | None = Field(None, description="persistent compile caches")
    max_batch_size: int = Field(32, ge=1, description="images denoised together in one forward")
    adapter_slots: int = Field(
        8,
        ge=0,
        description="LoRA slots per model (slot 0 = no adapter; 0: the peft path, one adapter a batch)",
    )
    adapter_max_rank: int = Field(32, ge=1, description="largest adapter rank the slots take")


class ProvenanceSettings(_Group):
    """Content Credentials (C2PA) and the invisible watermark on every generated image (README: Provenance)."""

    c2pa_sign_cert: Path | None = Field(
        None,
        description="PEM certificate chain of the C2PA signer, leaf first (the chart and Compose mount it from a "
        "secret; embedded mode makes a development CA and signer under the data dir when unset)",
    )
    c2pa_private_key: Path | None = Field(
        None, description="PEM private key of the C2PA signer's leaf certificate"
    )
    c2pa_tsa_url: str = Field(
        "", description="RFC 3161 timestamp authority the signatures are timestamped by"
    )
    c2pa_trust_anchors: Path | None = Field(
        None,
        description="more PEM CA certificates trusted whole: a signature by any certificate they issued verifies as ours (the signer's own leaf always does; other certificates of its CA do not)",
    )
    c2pa_without_signer: Literal["refuse", "off"] = Field(
        "refuse",
        description="a worker without a configured signer: `refuse` to start, or run with credentials `off`",
    )
    c2pa_thumbnail: bool = Field(
        False, description="embed a thumbnail in the credentials (about 30 KB an image)"
    )
    watermark_key: str = Field(
        "",
        description="key of the watermark payload (a keyed hash of the job); empty: derived from the signer's key",
    )
    watermark_opt_out_tenants: str = Field(
        "", description="tenants allowed to send `watermark: false` (comma-separated; others get 403)"
    )

    def opt_out_tenants(self) -> set[str]:
        return {t.strip() for t in self.watermark_opt_out_tenants.split(",") if t.strip()}


GROUPS: dict[str, type[_Group]] = {
    "process": ProcessSettings,
    "gateway": GatewaySettings,
    "catalog": CatalogSettings,
    "redis": RedisSettings,
    "limits": LimitsSettings,
    "storage": StorageSettings,
    "webhooks": WebhookSettings,
    "worker": WorkerSettings,
    "engine": EngineSettings,
    "provenance": ProvenanceSettings,
}


def env_name(group: type[_Group], field: str) -> str:
    """The environment variable of one field."""
    alias = group.model_fields[field].validation_alias
    return str(alias) if isinstance(alias, str) else ENV_PREFIX + field.upper()


def _env_index() -> dict[str, tuple[str, str]]:
    """`FAE_REDIS_URL` → ("redis", "url"), for every field of every group."""
    return {
        env_name(cls, field): (group, field) for group, cls in GROUPS.items() for field in cls.model_fields
    }


def env_names() -> set[str]:
    """Every environment variable the settings read (what Compose and the chart may set)."""
    return set(_env_index())


class Settings(BaseModel):
    """All groups together; built from the environment by default."""

    model_config = ConfigDict(frozen=True)

    process: ProcessSettings = Field(default_factory=ProcessSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    provenance: ProvenanceSettings = Field(default_factory=ProvenanceSettings)

    def override(self, **values: Any) -> Settings:
        """A copy with some variables changed, named as in the environment without the prefix, any case:
        ``settings.override(redis_url=..., lease_s=0.2)``. Values are validated as the environment's are."""
        index = _env_index()
        updates: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            name = ENV_PREFIX + key.upper()
            if name not in index:
                raise ValueError(f"no setting {name}; known: {', '.join(sorted(index))}")
            group, field = index[name]
            updates.setdefault(group, {})[field] = value
        groups = {
            group: GROUPS[group].model_validate({**getattr(self, group).model_dump(), **fields})
            for group, fields in updates.items()
        }
        return self.model_copy(update=groups)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()


def settings_table() -> str:
    """The README's settings table (markdown), one row per variable, from the field descriptions."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for group, cls in GROUPS.items():
        for field, info in cls.model_fields.items():
            default = info.get_default(call_default_factory=True)
            if isinstance(default, bool):
                default = str(default).lower()  # as the environment spells it
            shown = "" if default in (None, "") else f"`{default}`"
            rows.append(f"| `{env_name(cls, field)}` | {shown} | {group}: {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m core.settings` prints the README's settings table
    print(settings_table())
