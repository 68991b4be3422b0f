"""fae-client: the Python client of the fae-serve HTTP API (sync and async), and the `fae-client` command.

from fae_client import FAEClient

fae = FAEClient()  # FAE_BASE_URL (default http://127.0.0.1:8000) and FAE_API_KEY
job = fae.generate(prompt="red apple", steps=25, wait=True)
open("apple.png", "wb").write(fae.images(job)[0])
"""

from __future__ import annotations

from fae_client.client import AsyncFAEClient, FAEClient, save_images
from fae_client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ContentTooLargeError,
    FAEError,
    InternalServerError,
    JobFailedError,
    JobWaitTimeout,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
    WebhookVerificationError,
)
from fae_client.types import (
    Adapter,
    DeadLetter,
    Embedding,
    EmbeddingList,
    Job,
    JobError,
    JobEvent,
    JobLinks,
    JobOutput,
    JobPage,
    Model,
    Progress,
    ProvenanceVerification,
    WebhookEvent,
)
from fae_client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "Adapter",
    "AsyncFAEClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ContentTooLargeError",
    "DeadLetter",
    "Embedding",
    "EmbeddingList",
    "FAEClient",
    "FAEError",
    "InternalServerError",
    "Job",
    "JobError",
    "JobEvent",
    "JobFailedError",
    "JobLinks",
    "JobOutput",
    "JobPage",
    "JobWaitTimeout",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "ProvenanceVerification",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "WebhookEvent",
    "WebhookVerificationError",
    "save_images",
    "verify_webhook",
]
