"""The job contract shared by the gateway and the workers: request schemas, job states and records.

This module imports nothing heavy (no torch, no redis): both sides import it, and it is the only place
where a job's shape and its legal state transitions are defined.
"""

from __future__ import annotations

import enum
import itertools
import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, ValidationInfo, model_validator

# Limits of a request. The model stack checks the same numbers at its own API (model/ imports nothing of
# ours, so it keeps copies); tests/architecture/test_limits.py keeps each pair equal.
MAX_IMAGES_PER_REQUEST = 8
# Image-to-image: where an input image starts on the noise path when the request names no strength.
DEFAULT_STRENGTH = 0.6
MAX_STEPS = 250
MAX_GUIDANCE_INTERVALS = 8
# Seeds stay below 2^53, the largest integer a JSON number keeps exactly in JavaScript (a browser or Node
# client that stores a seed must get the same image back).
MAX_SEED = 2**53 - 1
FINETUNE_MAX_STEPS = 20_000
FINETUNE_MAX_RANK = 128
# How many usable images a fine-tune needs and takes: the gateway refuses other datasets at once (422), and the
# trainer (model/training/lora.py, which keeps copies) checks the same numbers again.
FINETUNE_MIN_IMAGES = 10
FINETUNE_MAX_IMAGES = 1000
# The longest start deadline a request may set (a week: longer than a job record lives).
MAX_START_DEADLINE_S = 7 * 24 * 3600
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


# The validation context of a record read back from the job store (`Job.from_record`): its free JSON was
# checked when the job was built, before it was written, so a read (every poll, every row of a listing) does not
# check it again.
_STORED_RECORD = {"stored_record": True}


def _free_json(max_depth: int, max_bytes: int) -> AfterValidator:
    def check(value: Any, info: ValidationInfo) -> Any:
        if info.context is _STORED_RECORD:
            return value
        return check_free_json(value, max_depth, max_bytes)

    return AfterValidator(check)


Metadata = Annotated[
    dict[str, Any],
    _free_json(MAX_METADATA_DEPTH, MAX_METADATA_BYTES),
    Field(
        description=f"Free-form JSON echoed back (at most {MAX_METADATA_DEPTH} levels, {MAX_METADATA_BYTES} bytes)."
    ),
]
RequestEcho = Annotated[dict[str, Any], _free_json(MAX_METADATA_DEPTH + 1, _MAX_REQUEST_ECHO_BYTES)]


class JobKind(enum.StrEnum):
    generate = "generate"
    finetune = "finetune"
    embed = "embed"


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
    """A request body: unknown fields are refused and nothing is coerced (`"n": true` or `"steps": "3"` is a
    422, not 1 or 3). Form fields, which are text by nature, are validated with `strict=False`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True)


StartDeadline = Annotated[
    float | None,
    Field(
        gt=0,
        le=MAX_START_DEADLINE_S,
        description="Seconds the job may wait in the queue: a job no worker started by then never starts; it is "
        "canceled, with error reason `start_deadline_exceeded`, by the reaper's next pass (every few seconds) or "
        "by the worker that reaches it first.",
    ),
]
Sampler = Literal["euler", "euler_maruyama"]
OutputFormat = Literal["png", "webp", "jpeg"]
GuidanceSchedule = Literal["constant", "fae-three-part", "fae-t2i"]
ResponseFormat = Literal["url", "b64_json"]
# Webhook event types (core/webhooks.py sends them); a job gets the terminal ones unless it names others.
WebhookEvent = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]
TERMINAL_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("job.succeeded", "job.failed", "job.canceled")
WebhookEvents = Annotated[
    Annotated[list[WebhookEvent], Field(min_length=1, max_length=5)] | None,
    Field(
        description="Which webhook events to send (default: the terminal ones, "
        "`job.succeeded`, `job.failed`, `job.canceled`); `job.progress` is throttled.",
    ),
]


class GuidanceInterval(StrictModel):
    """Guidance `scale` for t in [t_min, t_max] (t = 1 is noise, 0 is the image)."""

    t_min: float = Field(ge=0.0, le=1.0)
    t_max: float = Field(ge=0.0, le=1.0)
    scale: float = Field(ge=0.0, le=30.0)

    @model_validator(mode="after")
    def _ordered(self) -> GuidanceInterval:
        if not self.t_min < self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be below t_max ({self.t_max})")
        return self


def _check_guidance_intervals(intervals: list[GuidanceInterval]) -> list[GuidanceInterval]:
    ordered = sorted(intervals, key=lambda interval: interval.t_min)
    for low, high in itertools.pairwise(ordered):
        if high.t_min < low.t_max:
            raise ValueError(
                f"intervals [{low.t_min}, {low.t_max}] and [{high.t_min}, {high.t_max}] overlap (they may touch)"
            )
    return intervals


class GenerateRequest(StrictModel):
    """Body of `POST /v1/generate`."""

    model: str | None = Field(
        default=None,
        max_length=128,
        description="Model name (its current version), or `name@version` / `name@<fingerprint>` to run on "
        "that version only; default model if omitted.",
    )
    prompt: str | None = Field(default=None, min_length=1, max_length=2000)
    negative_prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Text models only: what to steer away from (replaces the empty prompt in guidance; "
        "has an effect only where `guidance_scale` differs from 1).",
    )
    class_label: int | None = Field(default=None, ge=0, le=1_000_000)
    n: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(default=1.0, ge=0.0, le=30.0)
    guidance_schedule: GuidanceSchedule = Field(
        default="constant",
        description="`fae-three-part`: the paper's ImageNet schedule (0.9 for t in [0.9, 1], `guidance_scale` for "
        "t in [0, 0.7], none between; t = 1 is noise); `fae-t2i`: its text-to-image one (`guidance_scale`, 1.5 "
        "in the paper, for t <= 0.9, none above).",
    )
    guidance_intervals: (
        Annotated[
            list[GuidanceInterval],
            Field(min_length=1, max_length=MAX_GUIDANCE_INTERVALS),
            AfterValidator(_check_guidance_intervals),
        ]
        | None
    ) = Field(
        default=None,
        description="Instead of a named schedule: a scale per t interval (they must not overlap), "
        '`guidance_scale` elsewhere; e.g. `[{"t_min": 0, "t_max": 0.9, "scale": 1.5}]`.',
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of the first image (image i uses seed + i); drawn when omitted. Seeds lie in "
        "[0, 2^53 - 1], so JavaScript clients keep them exactly.",
    )
    sampler: Sampler = "euler"
    output_format: OutputFormat = "png"
    response_format: ResponseFormat = Field(
        default="url",
        description="`b64_json`: each output carries its image bytes as base64, and `url` is null.",
    )
    adapter: str | None = Field(default=None, max_length=128)
    adapter_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    webhook_url: HttpUrl | None = None
    webhook_events: WebhookEvents = None
    metadata: Metadata = Field(default_factory=dict)
    start_deadline_s: StartDeadline = None
    watermark: bool = Field(
        default=True,
        description="`false` leaves out the invisible watermark (only for tenants the operator allows; others get "
        "403). Content Credentials are always attached.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Image-to-image: the input image as a `data:image/...;base64,` URI or a key under your "
        "`tenants/<tenant>/` prefix (or a multipart file part). The job's record shows where it was stored.",
    )
    strength: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description=f"With `image`: how far along the noise path the image starts ({DEFAULT_STRENGTH} if "
        "omitted): 1 is plain generation, small values stay close to the image, 0 is its reconstruction "
        "(encode and decode only, one output).",
    )

    @model_validator(mode="after")
    def _one_condition(self) -> GenerateRequest:
        if self.prompt is not None and self.class_label is not None:
            raise ValueError("give either `prompt` or `class_label`, not both")
        if self.strength is not None and self.image is None:
            raise ValueError("`strength` needs an `image`")
        if self.image is not None and self.strength == 0 and self.n != 1:
            raise ValueError("`strength: 0` (reconstruction) gives one image: send `n: 1`")
        if self.guidance_intervals is not None and self.guidance_schedule != "constant":
            raise ValueError("give either `guidance_intervals` or a named `guidance_schedule`, not both")
        return self


EmbeddingKind = Literal["latent", "latent_tokens", "encoder"]
MAX_EMBED_IMAGES = 16


class EmbedRequest(StrictModel):
    """Body of `POST /v1/embeddings` (README: Embeddings says which vector suits what)."""

    model: str | None = Field(default=None, max_length=128, description="Model name; default if omitted.")
    images: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        max_length=MAX_EMBED_IMAGES,
        description="`data:image/...;base64,` URIs or keys under your `tenants/<tenant>/` prefix "
        "(or multipart file parts named `images`).",
    )
    kind: EmbeddingKind = Field(
        default="latent",
        description="`latent`: the FAE latent averaged over its grid (channels); `latent_tokens`: one latent "
        "vector per grid cell, row-major; `encoder`: the frozen encoder's patch features averaged.",
    )


class FinetuneParams(StrictModel):
    """The parameters of `POST /v1/finetunes` (the dataset travels beside them)."""

    model: str | None = Field(
        default=None, max_length=128, description="The base model to adapt; the default model if omitted."
    )
    name: str | None = Field(default=None, max_length=128, description="A name for the adapter.")
    steps: int = Field(default=500, ge=1, le=FINETUNE_MAX_STEPS, description="Training steps.")
    rank: int = Field(default=8, ge=1, le=FINETUNE_MAX_RANK, description="LoRA rank of the adapter.")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0, description="AdamW learning rate.")
    trigger_phrase: str | None = Field(
        default=None,
        max_length=200,
        description="Text-conditional models: prepended to every caption while training; use it in prompts.",
    )
    s3_prefix: str | None = Field(
        default=None,
        max_length=1024,
        description="Instead of an upload (JSON body): a prefix under `tenants/<your tenant>/` in the bucket "
        "that holds the images.",
    )
    webhook_url: HttpUrl | None = Field(default=None, description="Where to send the job's webhooks.")
    webhook_events: WebhookEvents = None
    metadata: Metadata = Field(default_factory=dict)
    start_deadline_s: StartDeadline = None


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
    b64_json: str | None = Field(default=None, description="The image, base64 (`response_format: b64_json`).")
    expires_at: datetime | None = None
    content_type: str | None = None


class JobLinks(BaseModel):
    """Where to follow a job: its record, its cancel endpoint, its event stream and its images."""

    self: str = Field(description="The job (`GET`; `DELETE` once it finished).")
    cancel: str = Field(description="`POST` here to cancel it.")
    events: str = Field(description="Server-sent events of its status and progress.")
    outputs: list[str] = Field(
        default_factory=list, description="The output images' URLs, once it succeeded."
    )


class ProvenanceRecord(BaseModel):
    """What a generate job's images carry (README: Provenance)."""

    c2pa: bool = Field(description="Signed C2PA Content Credentials are embedded in every output.")
    watermark: bool = Field(
        description="The invisible watermark is in every output (not below 512 px a side)."
    )


class JobError(BaseModel):
    reason: Annotated[str, Field(description="Machine-readable reason, e.g. `invalid_input`, `worker_lost`.")]
    message: str


class Job(BaseModel):
    """A job as stored in the job store and returned by the API."""

    id: str
    kind: JobKind
    status: JobStatus
    tenant: str
    model: str | None = Field(
        default=None, description="The model name, or `name@version` when the request pinned a version."
    )
    model_version: str | None = Field(
        default=None,
        description="The model version it ran on (the catalog's at admission, until a worker runs it).",
    )
    model_fingerprint: str | None = Field(
        default=None, description="SHA-256 fingerprint of that model version's files (its fae-manifest.json)."
    )
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
        default_factory=dict,
        description="Seconds per stage: queued, denoise, decode, provenance, upload, total.",
    )
    adapter_id: str | None = Field(default=None, description="Finetune jobs: the adapter they produced.")
    webhook_url: str | None = None
    request_id: str | None = Field(
        default=None,
        description="The `X-Request-ID` of the request that created the job (also in worker logs).",
    )
    traceparent: str | None = Field(
        default=None, description="The W3C `traceparent` header of the request that created the job, if any."
    )
    links: JobLinks | None = Field(default=None, description="Set on every job the API returns.")
    provenance: ProvenanceRecord | None = Field(
        default=None, description="Generate jobs, once succeeded: the credentials and watermark they carry."
    )

    @classmethod
    def from_record(cls, raw: str | bytes) -> Job:
        """A job read back from the job store (the JSON a built `Job` wrote): every field is checked again except
        the free JSON of `request` and `metadata`, checked when the job was built."""
        return cls.model_validate_json(raw, context=_STORED_RECORD)


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


class RetiredWebhookSecret(BaseModel):
    """A secret a rotation replaced: it keeps signing beside the current one until `valid_until`."""

    secret: str = Field(min_length=1)
    valid_until: datetime


class WebhookSecretRecord(BaseModel):
    """A tenant's webhook secret after a rotation, and the ones earlier rotations replaced (newest first)."""

    current: str = Field(min_length=1)
    retired: list[RetiredWebhookSecret] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_previous(cls, data: Any) -> Any:
        """A record stored before rotations kept a list had one `previous` secret and its `previous_until`."""
        if isinstance(data, dict) and "retired" not in data and data.get("previous"):
            until = data.get("previous_until")
            data = {
                "current": data.get("current"),
                "retired": [{"secret": data["previous"], "valid_until": until}] if until else [],
            }
        return data

    def signing(self, now: datetime) -> list[str]:
        """The secrets that sign now: the current one, then each retired one whose overlap has not ended."""
        return [self.current, *(r.secret for r in self.retired if r.valid_until > now)]

    def overlap_until(self, now: datetime) -> datetime | None:
        """When the last retired secret stops signing; None when none signs any more."""
        return max((r.valid_until for r in self.retired if r.valid_until > now), default=None)


class DeadLetter(BaseModel):
    """A job parked after it kept killing its worker; an operator can replay its request."""

    job_id: str
    tenant: str
    kind: JobKind
    reason: str
    deliveries: int = Field(description="How many times the job was delivered to a worker.")
    at: datetime = Field(description="When it was dead-lettered.")


def start_deadline_at(job: Job) -> datetime | None:
    """When a job that never started stops being worth starting (`start_deadline_s` after it was created)."""
    deadline_s = job.request.get("start_deadline_s")
    if not isinstance(deadline_s, int | float) or isinstance(deadline_s, bool):
        return None
    return job.created_at + timedelta(seconds=deadline_s)


def job_prefix(tenant: str, job_id: str) -> str:
    """Where a job's outputs live (deleted with the job, or by retention)."""
    return f"tenants/{tenant}/jobs/{job_id}/"


def output_key(tenant: str, job_id: str, index: int, ext: str) -> str:
    """Deterministic object key: a redelivered job overwrites its own outputs, never someone else's."""
    return f"{job_prefix(tenant, job_id)}{index}.{ext}"


def input_key(tenant: str, job_id: str, index: int, ext: str) -> str:
    """Where the gateway stores a job's input image (beside its outputs: same retention, deleted with it)."""
    return f"{job_prefix(tenant, job_id)}inputs/{index}.{ext}"


def embeddings_key(tenant: str, job_id: str) -> str:
    """Where an embed job's worker writes its vectors (JSON) for the gateway to answer with."""
    return f"{job_prefix(tenant, job_id)}embeddings.json"


def adapter_key(tenant: str, adapter_id: str) -> str:
    return f"tenants/{tenant}/adapters/{adapter_id}/"


def checkpoints_key(tenant: str, job_id: str) -> str:
    """Where a fine-tune keeps its training checkpoints while it runs (a redelivery resumes from them)."""
    return f"tenants/{tenant}/finetunes/{job_id}/checkpoints/"


def dataset_key(tenant: str, job_id: str) -> str:
    """Where the gateway puts a fine-tune's uploaded dataset (the worker reads it from there)."""
    return f"tenants/{tenant}/datasets/{job_id}/"
