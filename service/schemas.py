"""Request, response and path types the routers share (job ids, pages, lists); every route's shapes in one
place, so routers never import each other."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from core.contract import MAX_IMAGES_PER_REQUEST, AdapterInfo, DeadLetter, Job, ResponseFormat

_ID_PATTERN = r"^[A-Za-z0-9_-]+$"

JobId = Annotated[str, Path(min_length=1, max_length=128, pattern=_ID_PATTERN)]
AdapterId = Annotated[str, Path(min_length=1, max_length=128, pattern=_ID_PATTERN)]


class JobPage(BaseModel):
    data: list[Job]
    next_cursor: str | None


class Model(BaseModel):
    """One model version the service offers (`GET /v1/models`)."""

    name: str = Field(
        description="Send it as `model`; `name@version` or `name@<fingerprint>` pins a version."
    )
    version: str | None = Field(
        default=None, description="Its version label (FAE_MODELS `name@version`, or its manifest's)."
    )
    fingerprint: str | None = Field(
        default=None,
        description="SHA-256 over its files (fae-manifest.json); null when the gateway cannot read the model.",
    )
    current: bool = Field(
        default=True, description="Whether a plain `name` runs on this version (else: kept for pinned jobs)."
    )
    condition_type: Literal["class", "text"] | None = Field(
        default=None, description="`class` labels or `text` prompts; null when unknown to the gateway."
    )
    num_classes: int | None = Field(default=None, description="Class-conditional models: labels 0..n-1.")
    image_size: int | None = Field(default=None, description="Pixels a side of every image.")
    default: bool = Field(default=False, description="The model a request without `model` gets.")
    supported_steps: list[int] | None = Field(
        default=None,
        description="A few-step distilled model: the only `steps` it runs (send one of them); null: any.",
    )
    distilled_guidance: float | None = Field(
        default=None,
        description="Guidance built into a distilled model (one call per step); leave `guidance_scale` at 1.",
    )


class ModelList(BaseModel):
    data: list[Model]


class AdapterList(BaseModel):
    data: list[AdapterInfo]


class DeadLetterList(BaseModel):
    data: list[DeadLetter]


class WebhookSecret(BaseModel):
    secret: str = Field(description="The current secret: verify deliveries with it.")
    previous_valid_until: datetime | None = Field(
        default=None,
        description="After a rotation: until then deliveries also carry a signature by the previous secret "
        "(by each secret a rotation within the overlap replaced, too; this is when the last of them stops).",
    )
    scheme: str = "standard-webhooks"
    headers: list[str] = ["webhook-id", "webhook-timestamp", "webhook-signature"]


class OpenAIImageRequest(BaseModel):
    """Body of `POST /v1/images/generations` (OpenAI's Images API; the parameters FAE models support)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(min_length=1, max_length=2000)
    model: str | None = Field(default=None, max_length=128, description="Our model name; default if omitted.")
    n: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    size: str | None = Field(
        default=None, max_length=32, description="`WxH`: only the model's size, or `auto`."
    )
    response_format: ResponseFormat = "url"
    user: str | None = Field(default=None, max_length=256, description="Kept as `metadata.openai_user`.")


class OpenAIImage(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int = Field(description="Unix time the request was accepted.")
    data: list[OpenAIImage]


class CredentialsCheck(BaseModel):
    """What the image's C2PA Content Credentials say (`POST /v1/provenance/verify`)."""

    status: Literal["valid", "tampered", "unknown_signer", "none"] = Field(
        description="`valid`: signed by this service's signer and unchanged since; `tampered`: credentials whose "
        "signature or content hash no longer matches; `unknown_signer`: intact, but signed by a certificate "
        "this service does not trust; `none`: no Content Credentials."
    )
    signer: str | None = Field(default=None, description="The signing certificate's common name.")
    digital_source_type: str | None = Field(
        default=None, description="The `c2pa.created` action's source type."
    )
    failures: list[str] = Field(default_factory=list, description="C2PA validation failure codes.")
    job_id: str | None = Field(
        default=None, description="The job named in valid credentials, if it is yours."
    )
    model: dict[str, str | None] | None = Field(default=None, description="Valid credentials: the model.")


class WatermarkCheck(BaseModel):
    found: bool = Field(description="The invisible watermark was detected.")
    job_id: str | None = Field(default=None, description="Your job whose output carries this watermark.")
    output_index: int | None = None


class ProvenanceVerification(BaseModel):
    credentials: CredentialsCheck
    watermark: WatermarkCheck
    job_id: str | None = Field(
        default=None, description="Your job that made the image (from the credentials or the watermark)."
    )
