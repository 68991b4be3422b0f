"""Request, response and path types the routers share (job ids, pages, lists); every route's shapes in one
place, so routers never import each other."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel

from core.contract import AdapterInfo, DeadLetter, Job

_ID_PATTERN = r"^[A-Za-z0-9_-]+$"

JobId = Annotated[str, Path(min_length=1, max_length=128, pattern=_ID_PATTERN)]
AdapterId = Annotated[str, Path(min_length=1, max_length=128, pattern=_ID_PATTERN)]


class JobPage(BaseModel):
    data: list[Job]
    next_cursor: str | None


class ModelList(BaseModel):
    data: list[dict[str, Any]]


class AdapterList(BaseModel):
    data: list[AdapterInfo]


class DeadLetterList(BaseModel):
    data: list[DeadLetter]


class WebhookSecret(BaseModel):
    secret: str
    scheme: str = "standard-webhooks"
    headers: list[str] = ["webhook-id", "webhook-timestamp", "webhook-signature"]
