"""Downloads for the local storage backend: `GET /v1/files/{key}?expires=..&signature=..`.

The HMAC signature covers the key and the expiry, so a URL opens exactly one object, until it expires;
no API key is needed (the URL is the credential, as with S3 presigned URLs).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from core.storage import InvalidKey, LocalStorage, content_type_for
from service.deps import Services, ServicesDep
from service.edges import GatewayRoute
from service.problems import ProblemError, not_found

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=GatewayRoute)


Expires = Annotated[int, Query(ge=0, le=2**40, description="Unix time the URL stops working.")]
Signature = Annotated[str, Query(min_length=1, max_length=128, description="The URL's HMAC signature.")]
_IMAGE = {200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}, "application/zip": {}}}}


@router.get(
    "/{key:path}",
    summary="Download an output through a signed URL (local storage only)",
    response_class=FileResponse,
    responses=_IMAGE,
)
def download(key: str, services: ServicesDep, expires: Expires, signature: Signature) -> FileResponse:
    return signed_file(services, key, expires, signature)


@router.head(
    "/{key:path}",
    summary="The headers of a signed URL's file (type, size) without its body",
    response_class=FileResponse,
    responses=_IMAGE,
)
def head(key: str, services: ServicesDep, expires: Expires, signature: Signature) -> FileResponse:
    return signed_file(services, key, expires, signature)  # Starlette sends a HEAD's headers only


def signed_file(services: Services, key: str, expires: int, signature: str) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise not_found("file")
    if not storage.verify(key, expires, signature):
        raise ProblemError(403, "Forbidden", "the URL's signature is invalid or has expired", "bad-signature")
    try:
        path = storage.path_for(key)
    except InvalidKey as exc:
        raise not_found("file") from exc
    if not path.is_file():
        raise not_found("file")
    return FileResponse(
        path, media_type=content_type_for(key), headers={"Cache-Control": "private, max-age=60"}
    )
