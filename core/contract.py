"""The job contract shared by the gateway and the workers: request schemas, job states and records.

This module imports nothing heavy (no torch, no redis): both sides import it, and it is the only place
where a job's shape and its legal state transitions are defined.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator

# Limits of a request. The model stack checks the same numbers at its own API (model/ imports nothing of
# ours, so it keeps copies); tests/architecture/test_limits.py keeps each pair equal.
MAX_IMAGES_PER_REQUEST = 8
MAX_STEPS = 250
MAX_SEED = 2**63 - 1
FINETUNE_MAX_STEPS = 20_000
FINETUNE_MAX_RANK = 128
# Free-form JSON (a request's `metadata`): nesting and encoded size, checked at the edge and again whenever
# a job is built or read, so a stored record is always one the reader accepts (pydantic's JSON reader stops
# at 200 levels). A job's `request` echo holds the metadata one level down, beside at most a few KiB more.
MAX_METADATA_DEPTH = 16
MAX_METADATA_BYTES = 16 * 1024
_MAX_REQUEST_ECHO_BYTES = MAX_METADATA_BYTES + 16 * 1024
# One encoder for every check: `json.dumps` with options builds a new one per call.
_FREE_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def check_free_json(value: Any, max_depth: int, max_bytes: int) -> Any:
    """`value` unchanged if it nests at most `max_depth` containers, encodes to at most `max_bytes` of JSON and
    holds only finite numbers (JSON has no NaN or Infinity; stored, they would silently come back as null)."""
    # Only containers go on the stack: every job read checks its request echo, mostly scalars.
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"nests deeper than {max_depth} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    try:
        size = len(_FREE_JSON.encode(value).encode())
    except ValueError as exc:
        raise ValueError("numbers must be finite (no NaN or Infinity)") from exc
    if size > max_bytes:
        raise ValueError(f"is {size} bytes of JSON; at most {max_bytes} are allowed")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(lambda value: check_free_json(value, MAX_METADATA_DEPTH, MAX_METADATA_BYTES)),
    Field(
        description=f"Free-form JSON echoed back (at most {MAX_METADATA_DEPTH} levels, {MAX_METADATA_BYTES} bytes)."
    ),
]
RequestEcho = Annotated[
    dict[str, Any],
    AfterValidator(lambda value: check_free_json(value, MAX_METADATA_DEPTH + 1, _MAX_REQUEST_ECHO_BYTES)),
]


class JobKind(enum.StrEnum):
    generate = "generate"
    finetune = "finetune"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})

# Legal transitions. `running -> queued` is the one step "back", and only the reaper or a redelivery takes
# it (a worker died holding the job); the job's `attempts` counter grows with it, so the history still only
# moves forward. Terminal states are final.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.canceled, JobStatus.failed}),
    JobStatus.running: frozenset(
        {JobStatus.queued, JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}
    ),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Sampler = Literal["euler", "euler_maruyama"]
OutputFormat = Literal["png", "webp", "jpeg"]
GuidanceSchedule = Literal["constant", "fae-three-part"]


class GenerateRequest(StrictModel):
    """Body of `POST /v1/generate`."""

    model: str | None = Field(
        default=None, max_length=128, description="Model name; default model if omitted."
    )
    prompt: str | None = Field(default=None, min_length=1, max_length=2000)
    class_label: int | None = Field(default=None, ge=0, le=1_000_000)
    n: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(default=1.0, ge=0.0, le=30.0)
    guidance_schedule: GuidanceSchedule = "constant"
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    sampler: Sampler = "euler"
    output_format: OutputFormat = "png"
    adapter: str | None = Field(default=None, max_length=128)
    adapter_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    webhook_url: HttpUrl | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_condition(self) -> GenerateRequest:
        if self.prompt is not None and self.class_label is not None:
            raise ValueError("give either `prompt` or `class_label`, not both")
        return self


class FinetuneParams(StrictModel):
    """The parameters of `POST /v1/finetunes` (the dataset travels beside them)."""

    model: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    steps: int = Field(default=500, ge=1, le=FINETUNE_MAX_STEPS)
    rank: int = Field(default=8, ge=1, le=FINETUNE_MAX_RANK)
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0)
    trigger_phrase: str | None = Field(default=None, max_length=200)
    s3_prefix: str | None = Field(default=None, max_length=1024)
    webhook_url: HttpUrl | None = None
    metadata: Metadata = Field(default_factory=dict)


class Progress(BaseModel):
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    loss: float | None = None


class JobOutput(BaseModel):
    index: int
    seed: int | None = None
    key: str = Field(description="Object key in storage (deterministic per job and index).")
    url: str | None = None
    expires_at: datetime | None = None
    content_type: str | None = None


class JobError(BaseModel):
    reason: Annotated[str, Field(description="Machine-readable reason, e.g. `invalid_input`, `worker_lost`.")]
    message: str


class Job(BaseModel):
    """A job as stored in the job store and returned by the API."""

    id: str
    kind: JobKind
    status: JobStatus
    tenant: str
    model: str | None = None
    request: RequestEcho = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    progress: Progress = Field(default_factory=Progress)
    outputs: list[JobOutput] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int = Field(default=0, description="How many times the job has started running.")
    cancel_requested: bool = False
    worker_id: str | None = Field(default=None, description="The worker of the latest attempt.")
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds per stage: queued, denoise, decode, upload, total."
    )
    adapter_id: str | None = Field(default=None, description="Finetune jobs: the adapter they produced.")
    webhook_url: str | None = None


class AdapterInfo(BaseModel):
    """A fine-tuned adapter as its tenant sees it (`GET /v1/adapters`)."""

    id: str = Field(min_length=1, description="Use it as `adapter` in `POST /v1/generate`.")
    model: str = Field(description="The model it was trained for (and only works with).")
    name: str | None = None
    job_id: str | None = Field(default=None, description="The fine-tune job that trained it.")
    rank: int | None = None
    steps: int | None = None
    trigger_phrase: str | None = None
    created_at: datetime
    base_fingerprint: str | None = None
    condition_type: str | None = None
    adapter_bytes: int | None = None
    final_loss: float | None = None
    total_duration_s: float | None = None


class AdapterRecord(AdapterInfo):
    """What a finished fine-tune registers in the job store: the adapter, its owner and where its weights
    are in storage (the last two are bookkeeping, not shown to callers)."""

    tenant: str = Field(min_length=1)
    key: str = Field(min_length=1, description="Storage prefix of the weights (`adapter_key`).")

    def info(self) -> AdapterInfo:
        return AdapterInfo.model_validate(self.model_dump(exclude={"tenant", "key"}))


class DeadLetter(BaseModel):
    """A job parked after it kept killing its worker; an operator can replay its request."""

    job_id: str
    tenant: str
    kind: JobKind
    reason: str
    deliveries: int = Field(description="How many times the job was delivered to a worker.")
    at: datetime = Field(description="When it was dead-lettered.")


def job_prefix(tenant: str, job_id: str) -> str:
    """Where a job's outputs live (deleted with the job, or by retention)."""
    return f"tenants/{tenant}/jobs/{job_id}/"


def output_key(tenant: str, job_id: str, index: int, ext: str) -> str:
    """Deterministic object key: a redelivered job overwrites its own outputs, never someone else's."""
    return f"{job_prefix(tenant, job_id)}{index}.{ext}"


def adapter_key(tenant: str, adapter_id: str) -> str:
    return f"tenants/{tenant}/adapters/{adapter_id}/"


def checkpoints_key(tenant: str, job_id: str) -> str:
    """Where a fine-tune keeps its training checkpoints while it runs (a redelivery resumes from them)."""
    return f"tenants/{tenant}/finetunes/{job_id}/checkpoints/"


def dataset_key(tenant: str, job_id: str) -> str:
    """Where the gateway puts a fine-tune's uploaded dataset (the worker reads it from there)."""
    return f"tenants/{tenant}/datasets/{job_id}/"
