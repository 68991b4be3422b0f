"""Downloads for the local storage backend: `GET /v1/files/{key}?expires=..&signature=..`.

The HMAC signature covers the key and the expiry, so a URL opens exactly one object, until it expires;
no API key is needed (the URL is the credential, as with S3 presigned URLs).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from core.storage import InvalidKey, LocalStorage, content_type_for
from service.deps import ServicesDep
from service.problems import ProblemError, not_found

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{key:path}", summary="Download an output through a signed URL (local storage only)")
def download(
    key: str,
    services: ServicesDep,
    expires: Annotated[int, Query(ge=0, le=2**40)],
    signature: Annotated[str, Query(min_length=1, max_length=128)],
) -> FileResponse:
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
