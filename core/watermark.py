"""The invisible watermark: a 48-bit payload spread over a periodic tile in the image's luminance.

Method (spread spectrum with a self-synchronising periodic tile; Cox et al. 1997, Kutter 1999): a 64×64-pixel
tile of 16×16 chips (4×4 pixels each) carries 48 payload bits and 16 known sync bits, each bit on 4 chips with
a pseudo-random sign; the tile repeats over the whole image and is added to the luminance, scaled by the
local texture so flat areas get less. Detection high-passes the luminance, folds it onto one tile (averaging
every repetition, which also averages out the image), finds the tile's offset from the sync bits by circular
correlation (so a crop, which only shifts the tile, costs nothing), and reads each bit's sign. An unknown
resize is searched over a few scales (the tile's period changes with the image). Numbers (bit accuracy after
JPEG q75, half-size resize and a crop; PSNR) are in benchmarks/RESULTS.md (`benchmarks/bench_watermark.py`).

It needs images of at least `MIN_WATERMARK_SIZE` pixels a side: the demo model's 64 px images hold one tile,
too little to survive a resize, so they are left unmarked and their job record says so.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np
from PIL import Image

PAYLOAD_BITS = 48
SYNC_BITS = 16
CHIP = 4  # pixels a side of one chip at the embedding resolution
CHIPS = 16  # chips a side of one tile
TILE = CHIP * CHIPS
STRENGTH = 3.0  # luminance amplitude (0..255) at average texture
MIN_WATERMARK_SIZE = 512  # smallest side that survives the transformations (benchmarks/RESULTS.md)
# The resize factors detection tries (the image's size now ÷ at embedding); 1 covers JPEG and crops.
SCALES = (1.0, 0.5, 0.75, 2 / 3, 0.8, 0.9, 0.6, 1.25, 1.5, 2.0)
# A detection counts when at least this many of the 16 sync bits are right (chance: under 1 in 1000 per scale
# and offset tried) and its correlation peak stands out of the tile's other offsets.
MIN_SYNC_MATCHES = 16
MIN_PEAK_Z = 4.5
# Reading looks at a centred window of at most this many pixels a side (at the scale tried): the tile repeats
# every TILE pixels, so the window holds (READ_WINDOW / TILE)^2 copies of the mark, plenty of votes, and the
# cost of a verification stays bounded whatever the size of the upload.
READ_WINDOW = 1024

_LAYOUT_SEED = 0x0FAE5E  # the chip layout is public; the payload's key is what makes marks unforgeable
_SYNC = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1], dtype=np.int8)


def _layout() -> tuple[np.ndarray, np.ndarray]:
    """Which bit each chip carries (0..63; the last 16 are sync) and its ±1 sign, both CHIPS×CHIPS."""
    rng = np.random.default_rng(_LAYOUT_SEED)
    bits = rng.permutation(np.arange(CHIPS * CHIPS) % (PAYLOAD_BITS + SYNC_BITS)).reshape(CHIPS, CHIPS)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(CHIPS, CHIPS))
    return bits, signs


_BIT_OF_CHIP, _SIGN_OF_CHIP = _layout()


def payload_for(key: bytes, tenant: str, job_id: str, index: int) -> int:
    """The 48-bit payload of one output: a keyed hash of (tenant, job, index), so nobody without the key
    can mint a mark that points at a job, and verify looks it up in the tenant's index."""
    digest = hmac.new(key, f"{tenant}\n{job_id}\n{index}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:6], "big")


def payload_hex(payload: int) -> str:
    return f"{payload:012x}"


def can_watermark(width: int, height: int) -> bool:
    return min(width, height) >= MIN_WATERMARK_SIZE


def _bits_of(payload: int) -> np.ndarray:
    return np.array([(payload >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)], dtype=np.int8)


def _tile(payload: int) -> np.ndarray:
    """The ±1 pattern of one tile (TILE×TILE) carrying ``payload`` and the sync bits."""
    bits = np.concatenate([_bits_of(payload), _SYNC]).astype(np.float64) * 2 - 1
    chips = bits[_BIT_OF_CHIP] * _SIGN_OF_CHIP
    return np.kron(chips, np.ones((CHIP, CHIP)))


def _box_blur(plane: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges replicated), by integral image."""
    size = 2 * radius + 1
    padded = np.pad(plane, radius + 1, mode="edge")
    integral = padded.cumsum(0).cumsum(1)
    total = (
        integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    )
    return total[: plane.shape[0], : plane.shape[1]] / (size * size)


def _luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("YCbCr"), dtype=np.float64)[..., 0]


def embed(image: Image.Image, payload: int) -> Image.Image:
    """``image`` with ``payload`` (48 bits) added to its luminance; colour is kept."""
    if not 0 <= payload < 2**PAYLOAD_BITS:
        raise ValueError(f"a watermark payload has {PAYLOAD_BITS} bits")
    ycbcr = np.asarray(image.convert("RGB").convert("YCbCr"), dtype=np.float64).copy()
    luma = ycbcr[..., 0]
    height, width = luma.shape
    pattern = np.tile(_tile(payload), (height // TILE + 1, width // TILE + 1))[:height, :width]
    # Perceptual mask: stronger where the image is busy (the mark hides in texture), weaker where flat.
    activity = np.sqrt(np.maximum(_box_blur(luma**2, 2) - _box_blur(luma, 2) ** 2, 0.0))
    mask = np.clip(activity / max(float(activity.mean()), 1e-6), 0.5, 2.0)
    ycbcr[..., 0] = np.clip(luma + STRENGTH * mask * pattern, 0, 255)
    marked = Image.fromarray(np.round(ycbcr).astype(np.uint8), "YCbCr").convert("RGB")
    return marked


@dataclass(frozen=True)
class Detection:
    """What a detection read: the payload, its scale and how sure it is."""

    payload: int
    scale: float
    sync_matches: int
    peak_z: float
    bits: tuple[int, ...]


def _fold(residual: np.ndarray) -> np.ndarray:
    """The residual averaged onto one TILE×TILE tile (every repetition added up)."""
    height, width = residual.shape
    rows, cols = height // TILE * TILE, width // TILE * TILE
    if rows == 0 or cols == 0:
        return np.zeros((TILE, TILE))
    return residual[:rows, :cols].reshape(rows // TILE, TILE, cols // TILE, TILE).mean(axis=(0, 2))


def _read(luma: np.ndarray) -> Detection | None:
    residual = luma - _box_blur(luma, CHIP)
    # Whiten: the image's own detail is the noise, strongest in busy areas, so each pixel counts by the inverse
    # of its neighbourhood's activity (the mark there is stronger too, but not by as much).
    activity = np.sqrt(np.maximum(_box_blur(residual**2, 2 * CHIP), 0.0))
    folded = _fold(residual / (activity + 1.0))
    # Chip sums for every offset at once: box-sum the folded tile over CHIP×CHIP (circularly).
    spectrum = np.fft.fft2(folded)
    box = np.zeros((TILE, TILE))
    box[:CHIP, :CHIP] = 1.0
    chip_sums = np.real(np.fft.ifft2(spectrum * np.conj(np.fft.fft2(box))))
    # Correlate with the sync chips' expected signs at every offset.
    sync_template = np.zeros((TILE, TILE))
    sync_rows, sync_cols = np.nonzero(_BIT_OF_CHIP >= PAYLOAD_BITS)
    expected = (_SYNC[_BIT_OF_CHIP[sync_rows, sync_cols] - PAYLOAD_BITS] * 2 - 1) * _SIGN_OF_CHIP[
        sync_rows, sync_cols
    ]
    sync_template[sync_rows * CHIP, sync_cols * CHIP] = expected
    correlation = np.real(np.fft.ifft2(np.fft.fft2(chip_sums) * np.conj(np.fft.fft2(sync_template))))
    dy, dx = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    spread = float(correlation.std()) or 1e-9
    peak_z = float((correlation[dy, dx] - correlation.mean()) / spread)
    # Chip values at the found offset, then each bit's signed vote.
    grid = chip_sums[
        (np.arange(CHIPS)[:, None] * CHIP + dy) % TILE, (np.arange(CHIPS)[None, :] * CHIP + dx) % TILE
    ]
    votes = np.zeros(PAYLOAD_BITS + SYNC_BITS)
    np.add.at(votes, _BIT_OF_CHIP.ravel(), (grid * _SIGN_OF_CHIP).ravel())
    bits = (votes > 0).astype(np.int8)
    sync_matches = int((bits[PAYLOAD_BITS:] == _SYNC).sum())
    payload = int("".join(map(str, bits[:PAYLOAD_BITS])), 2)
    return Detection(payload, 1.0, sync_matches, peak_z, tuple(int(b) for b in bits[:PAYLOAD_BITS]))


def read(image: Image.Image, scales: tuple[float, ...] = SCALES) -> Detection | None:
    """The best reading over the candidate scales, found or not (see ``detect`` for a decision)."""
    rgb = image.convert("RGB")
    best: Detection | None = None
    for scale in scales:
        window = _centre(rgb, round(READ_WINDOW * scale))
        width, height = round(window.width / scale), round(window.height / scale)
        if min(width, height) < TILE:
            continue
        resized = window if scale == 1.0 else window.resize((width, height), Image.Resampling.BICUBIC)
        found = _read(_luma(resized))
        if found is None:
            continue
        found = Detection(found.payload, scale, found.sync_matches, found.peak_z, found.bits)
        if best is None or (found.sync_matches, found.peak_z) > (best.sync_matches, best.peak_z):
            best = found
        if found.sync_matches == SYNC_BITS and found.peak_z >= 2 * MIN_PEAK_Z:
            break  # unmistakable: no need to try the other scales
    return best


def _centre(image: Image.Image, side: int) -> Image.Image:
    """The image's centre, at most `side` pixels a side."""
    width, height = min(image.width, side), min(image.height, side)
    if (width, height) == image.size:
        return image
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def detect(image: Image.Image) -> Detection | None:
    """The watermark's reading if the image carries one, else None."""
    found = read(image)
    if found is None or found.sync_matches < MIN_SYNC_MATCHES or found.peak_z < MIN_PEAK_Z:
        return None
    return found
