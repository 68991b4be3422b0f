"""Encoding generated images and putting them in storage under the job's deterministic keys."""

from __future__ import annotations

import io
from typing import Any

from core.contract import JobOutput, output_key
from core.storage import Storage, retry_storage

# output_format → (Pillow format, content type, encoder options)
IMAGE_FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "png": ("PNG", "image/png", {"optimize": False}),
    "webp": ("WEBP", "image/webp", {"quality": 90}),
    "jpeg": ("JPEG", "image/jpeg", {"quality": 92}),
}


def encode_image(image: Any, output_format: str) -> tuple[bytes, str]:
    """A PIL image as bytes in ``output_format`` (png, webp, jpeg) and its content type."""
    if output_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; use one of {sorted(IMAGE_FORMATS)}")
    pil_format, content_type, options = IMAGE_FORMATS[output_format]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=pil_format, **options)
    return buffer.getvalue(), content_type


def upload_images(
    storage: Storage,
    tenant: str,
    job_id: str,
    encoded: list[tuple[bytes, str]],
    seeds: list[int],
    output_format: str,
    retry_s: float,
) -> list[JobOutput]:
    """Store every encoded image (bytes, content type); a redelivered job writes the same keys, overwriting
    its own outputs.

    The images were encoded (and signed, worker/provenance.py) once and are kept while storage is retried (for
    up to `retry_s`), so a short storage outage costs a wait, never the denoising work."""
    outputs = []
    for index, ((data, content_type), seed) in enumerate(zip(encoded, seeds, strict=True)):
        key = output_key(tenant, job_id, index, output_format)
        retry_storage(lambda: storage.put_bytes(key, data, content_type), retry_s)  # noqa: B023 (called at once)
        outputs.append(JobOutput(index=index, seed=seed, key=key, content_type=content_type))
    return outputs
