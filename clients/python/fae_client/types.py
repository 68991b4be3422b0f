"""What the API returns, as pydantic models. Every model keeps fields it does not know (`extra="allow"`) and
every field has a default where the server may leave it out, so a newer server never breaks an older client.
Statuses and kinds are plain strings for the same reason; `Job.done` knows the terminal ones."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


class APIModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Progress(APIModel):
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    loss: float | None = None


class JobOutput(APIModel):
    index: int = 0
    seed: int | None = None
    key: str | None = None
    url: str | None = Field(default=None, description="Presigned download URL (null with b64_json).")
    b64_json: str | None = Field(default=None, description="The image, base64 (response_format b64_json).")
    expires_at: datetime | None = None
    content_type: str | None = None


class JobError(APIModel):
    reason: str = ""
    message: str = ""


class JobLinks(APIModel):
    self_: str | None = Field(default=None, alias="self")
    cancel: str | None = None
    events: str | None = None
    outputs: list[str] = Field(default_factory=list)


class Job(APIModel):
    """A generate or fine-tune job."""

    id: str
    kind: str = "generate"
    status: str
    tenant: str | None = None
    model: str | None = None
    model_version: str | None = None
    model_fingerprint: str | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = None
    progress: Progress = Field(default_factory=Progress)
    outputs: list[JobOutput] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    error: JobError | None = None
    attempts: int = 0
    cancel_requested: bool = False
    timings: dict[str, float] = Field(default_factory=dict)
    adapter_id: str | None = None
    request_id: str | None = None
    links: JobLinks | None = None

    @property
    def done(self) -> bool:
        """Whether the job reached a terminal status (succeeded, failed or canceled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class JobPage(APIModel):
    data: list[Job] = Field(default_factory=list)
    next_cursor: str | None = None


class Model(APIModel):
    """A model the server offers (`GET /v1/models`)."""

    name: str
    condition_type: str | None = Field(default=None, description="`text` (prompt) or `class` (class_label).")
    image_size: int | None = None
    num_classes: int | None = None
    default: bool = False
    version: str | None = None
    fingerprint: str | None = None
    supported_steps: list[int] | None = Field(
        default=None, description="A few-step distilled model: the only `steps` it runs; None: any."
    )
    distilled_guidance: float | None = Field(
        default=None, description="Guidance built into a distilled model: leave `guidance_scale` at 1."
    )


class Adapter(APIModel):
    """A fine-tuned LoRA adapter: pass its `id` as `adapter` to `generate`."""

    id: str
    model: str | None = None
    name: str | None = None
    job_id: str | None = None
    rank: int | None = None
    steps: int | None = None
    trigger_phrase: str | None = None
    created_at: datetime | None = None
    base_fingerprint: str | None = None
    condition_type: str | None = None
    adapter_bytes: int | None = None
    final_loss: float | None = None
    total_duration_s: float | None = None


class DeadLetter(APIModel):
    """A job parked after it kept killing its worker (admin scope)."""

    job_id: str
    tenant: str | None = None
    kind: str | None = None
    reason: str | None = None
    deliveries: int = 0
    at: datetime | None = None


class JobEvent(APIModel):
    """One server-sent event of `jobs.stream`: `status` (with the whole `job`) or `progress`."""

    event: str
    id: str | None = None
    data: Any = None
    job: Job | None = None
    progress: Progress | None = None


class WebhookEvent(APIModel):
    """A verified webhook delivery: `type` such as `job.succeeded`, and the job as `data`."""

    type: str
    id: str | None = None
    timestamp: datetime | str | None = None
    data: Job


class CredentialsCheck(APIModel):
    """What an image's C2PA Content Credentials say: `valid`, `tampered`, `unknown_signer` or `none`."""

    status: str = "none"
    signer: str | None = None
    digital_source_type: str | None = None
    failures: list[str] = Field(default_factory=list)
    job_id: str | None = Field(default=None, description="Your job named in valid credentials.")
    model: dict[str, Any] | None = None


class WatermarkCheck(APIModel):
    found: bool = False
    job_id: str | None = Field(default=None, description="Your job whose output carries this watermark.")
    output_index: int | None = None


class ProvenanceVerification(APIModel):
    """`POST /v1/provenance/verify`: the credentials, the watermark, and which of your jobs made the image."""

    credentials: CredentialsCheck = Field(default_factory=CredentialsCheck)
    watermark: WatermarkCheck = Field(default_factory=WatermarkCheck)
    job_id: str | None = None


class Embedding(APIModel):
    index: int
    embedding: list[float] | list[list[float]] = Field(
        description="`latent`, `encoder`: one vector; `latent_tokens`: one vector per latent grid cell."
    )


class EmbeddingList(APIModel):
    """`POST /v1/embeddings`: one embedding per image, in order."""

    model: str
    kind: str
    dimensions: int
    data: list[Embedding]
    job_id: str | None = None
