"""The invisible watermark on a photograph at the smallest supported size: it survives JPEG q75, a half-size
resize and a small crop (each and together), is not found where it was never put, and its payload is keyed;
the job store indexes payloads per tenant (memory and Redis)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from core.jobstore import JobStore
from core.watermark import MIN_WATERMARK_SIZE, PAYLOAD_BITS, can_watermark, detect, embed, payload_for

PAYLOAD = 0xA5C3_0F1E_7B29


def photo(size: int = MIN_WATERMARK_SIZE) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.LANCZOS)


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def crop(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx // 3, dy // 2, image.width - (dx - dx // 3), image.height - (dy - dy // 2)))


@pytest.fixture(scope="module")
def marked() -> Image.Image:
    return embed(photo(), PAYLOAD)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i, dtype=np.float64) for i in (a, b))
    return float(10 * np.log10(255.0**2 / ((x - y) ** 2).mean()))


@pytest.mark.parametrize(
    "transform",
    [
        lambda i: i,
        jpeg,
        half,
        crop,
        lambda i: jpeg(half(crop(i))),
    ],
    ids=["none", "jpeg-q75", "half-size", "crop-5pct", "crop+half+jpeg"],
)
def test_the_payload_survives_what_marketplaces_do(marked: Image.Image, transform: Callable) -> None:
    found = detect(transform(marked))
    assert found is not None and found.payload == PAYLOAD


def test_the_mark_is_faint_and_absent_images_are_not_flagged(marked: Image.Image) -> None:
    assert psnr(photo(), marked) > 35
    for image in (photo(), jpeg(photo()), half(photo()), photo(640)):
        assert detect(image) is None


def test_a_large_upload_is_read_from_a_bounded_window() -> None:
    """Verification reads a centred window, not the whole upload (its cost stays bounded): a mark on an image
    larger than the window, and on that image at half size, is still found."""
    large = embed(photo(1280), PAYLOAD)
    for image in (large, half(large)):
        found = detect(image)
        assert found is not None and found.payload == PAYLOAD


def test_it_applies_only_from_the_minimum_size() -> None:
    assert can_watermark(MIN_WATERMARK_SIZE, MIN_WATERMARK_SIZE)
    assert not can_watermark(64, 64) and not can_watermark(MIN_WATERMARK_SIZE, MIN_WATERMARK_SIZE - 1)
    with pytest.raises(ValueError, match="48 bits"):
        embed(photo(), 2**PAYLOAD_BITS)


def test_payloads_are_keyed_per_tenant_job_and_output() -> None:
    base = payload_for(b"k", "acme", "job", 0)
    assert 0 <= base < 2**PAYLOAD_BITS and base == payload_for(b"k", "acme", "job", 0)
    others = {payload_for(b"other", "acme", "job", 0), payload_for(b"k", "globex", "job", 0)}
    others |= {payload_for(b"k", "acme", "job", 1), payload_for(b"k", "acme", "job2", 0)}
    assert base not in others and len(others) == 4


def test_the_watermark_index_answers_only_within_the_tenant(store: JobStore) -> None:
    store.put_watermark("acme", "00a5c30f1e7b", "job-1", 1)
    assert store.find_watermark("acme", "00a5c30f1e7b") == ("job-1", 1)
    assert store.find_watermark("globex", "00a5c30f1e7b") is None
    assert store.find_watermark("acme", "ffffffffffff") is None
