"""Input images of image-to-image and embedding requests: read from a data URI, an upload or the tenant's own
storage prefix, checked before anything decodes them, and stored under the job's prefix for the worker.

The checks are the fine-tune uploads' (`service.datasets.check_image`: PNG, JPEG or WebP, at most
FAE_MAX_IMAGE_PIXELS judged from the header, so a decompression bomb is refused undecoded) with the size limit of
one dataset file (FAE_MAX_DATASET_FILE_BYTES). The worker decodes the stored copy (EXIF orientation, alpha on
white: `model.img2img`). A stored input lives beside the job's outputs, so it has their retention and goes
with the job.
"""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import UploadFile

from core.contract import input_key
from core.provenance import sniff_format
from core.settings import GatewaySettings
from core.storage import InvalidKey, Storage, check_key, content_type_for
from service.datasets import UploadRejected, check_image
from service.problems import ProblemError
from service.validation import invalid

_DATA_URI = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.IGNORECASE)
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def too_large(field: str, limit: int) -> ProblemError:
    return ProblemError(413, None, f"{field}: the image is larger than {limit} bytes", "upload-too-large")


async def read_part(upload: UploadFile, field: str, limit: int) -> bytes:
    """An uploaded image part's bytes, reading at most one byte past `limit` (413 past it)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(field, limit)
    return data


def decode_data_uri(value: str, field: str, limit: int) -> bytes:
    """A `data:image/...;base64,` URI's bytes; its length is checked before decoding."""
    match = _DATA_URI.match(value)
    if match is None:
        raise invalid(field, "a data URI must look like data:image/png;base64,<data>")
    encoded = value[match.end() :]
    if len(encoded) > (limit + 2) // 3 * 4 + 4:
        raise too_large(field, limit)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(field, "the data URI's base64 does not decode") from exc


def read_stored(key: str, field: str, tenant: str, storage: Storage) -> bytes:
    """An image the tenant already put in the bucket: only under its own `tenants/<tenant>/` prefix."""
    own = f"tenants/{tenant}/"
    try:
        check_key(key)
    except InvalidKey as exc:
        raise invalid(field, "not a data URI or a valid storage key") from exc
    if not key.startswith(own):
        raise invalid(field, f"a storage key must lie under {own!r} (your tenant's part of the bucket)")
    try:
        return storage.get_bytes(key)
    except FileNotFoundError as exc:
        raise invalid(field, f"no object {key!r} in storage") from exc


def read_reference(value: str, field: str, tenant: str, storage: Storage, gateway: GatewaySettings) -> bytes:
    """The bytes a request's `image` names (a data URI or a storage key)."""
    limit = gateway.max_dataset_file_bytes
    if value.startswith("data:"):
        return decode_data_uri(value, field, limit)
    return read_stored(value, field, tenant, storage)


def checked_image(data: bytes, field: str, gateway: GatewaySettings) -> str:
    """Refuse what is not a usable image before anything decodes it; its file extension."""
    if len(data) > gateway.max_dataset_file_bytes:
        raise too_large(field, gateway.max_dataset_file_bytes)
    image_format = sniff_format(data)
    if image_format is None:
        raise invalid(field, "send a PNG, JPEG or WebP image")
    try:
        check_image("the image", data, gateway.max_image_pixels)
    except UploadRejected as exc:
        raise invalid(field, str(exc)) from exc
    return EXTENSIONS[image_format]


def store_inputs(storage: Storage, tenant: str, job_id: str, images: list[tuple[bytes, str]]) -> list[str]:
    """Write checked images under the job's prefix; their keys (what the worker reads). A failed write deletes
    the ones already written: no job refers to them yet."""
    keys: list[str] = []
    try:
        for index, (data, ext) in enumerate(images):
            key = input_key(tenant, job_id, index, ext)
            storage.put_bytes(key, data, content_type_for(key))
            keys.append(key)
    except BaseException:
        if keys:
            storage.delete_keys(keys)
        raise
    return keys
