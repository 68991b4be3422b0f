"""Input images of image-to-image and embed jobs: read from the job's prefix (where the gateway stored them,
already checked) and decoded, the pixel count checked again from the header before decoding."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from core.settings import Settings
from core.storage import Storage, retry_storage
from model.errors import InvalidInputError

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_input_image(storage: Storage, tenant: str, key: str, settings: Settings) -> Any:
    """The decoded image at `key` (a PIL image; orientation and alpha are the model's: `model.img2img`)."""
    if not key.startswith(f"tenants/{tenant}/"):  # the gateway only ever stores under the job's own prefix
        raise InvalidInputError("the input image is not in this tenant's storage")
    data = retry_storage(lambda: storage.get_bytes(key), settings.storage.storage_retry_s)
    max_pixels = settings.gateway.max_image_pixels
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except _DECODE_ERRORS as exc:
        raise InvalidInputError("the input image cannot be decoded") from exc
    if width * height > max_pixels:
        raise InvalidInputError(f"the input image is {width}x{height}; at most {max_pixels} pixels")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except _DECODE_ERRORS as exc:
        raise InvalidInputError("the input image cannot be decoded") from exc
    return image
