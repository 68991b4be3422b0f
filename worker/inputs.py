"""Input images of image-to-image and embed jobs: read from the job's prefix (where the gateway stored them,
already checked) and decoded, the pixel count checked again from the header before decoding."""

from __future__ import annotations

from typing import Any

from core.images import ImageRefused, decode
from core.settings import Settings
from core.storage import Storage, retry_storage
from model.errors import InvalidInputError


def load_input_image(storage: Storage, tenant: str, key: str, settings: Settings) -> Any:
    """The decoded image at `key` (a PIL image; orientation and alpha are the model's: `model.img2img`)."""
    if not key.startswith(f"tenants/{tenant}/"):  # the gateway only ever stores under the job's own prefix
        raise InvalidInputError("the input image is not in this tenant's storage")
    data = retry_storage(lambda: storage.get_bytes(key), settings.storage.storage_retry_s)
    try:
        return decode(data, settings.gateway.max_image_pixels)
    except ImageRefused as exc:
        raise InvalidInputError(f"the input image {exc}") from exc
