"""Images from outside (uploads, stored inputs, images sent for verification): their size is judged from the header
before anything decodes them, so a decompression bomb is refused undecoded. The gateway and the workers share this
one check; each turns `ImageRefused` into its own error (problem JSON, a job's `invalid_input`)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# What PIL raises for bytes that are not a readable image (or one past its own pixel ceiling).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageRefused(ValueError):
    """The image is refused; the message, written for the caller, completes a sentence about the image
    ("is not a readable image", "is 9000x9000 pixels; ...")."""


def _open(source: Path | bytes) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def read_header(source: Path | bytes, max_pixels: int) -> tuple[str | None, int, int]:
    """(format, width, height) from the header alone; ImageRefused when it does not read or has more than
    `max_pixels` pixels."""
    try:
        with _open(source) as image:
            image_format, (width, height) = image.format, image.size
    except Image.DecompressionBombError as exc:  # PIL's own ceiling, far above ours
        raise ImageRefused(f"has too many pixels; at most {max_pixels} pixels are accepted") from exc
    except DECODE_ERRORS as exc:
        raise ImageRefused("is not a readable image") from exc
    if width * height > max_pixels:
        raise ImageRefused(f"is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    return image_format, width, height


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """The decoded image, its header checked first; ImageRefused when either step fails."""
    read_header(data, max_pixels)
    try:
        image = _open(data)
        image.load()
    except DECODE_ERRORS as exc:
        raise ImageRefused("is not a readable image") from exc
    return image
