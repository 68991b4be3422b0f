"""On-disk cache of frozen-encoder features and compressor latents, computed once per dataset.

The frozen encoder is the expensive part of every FAE stage; caching its output (for each image and its
horizontal flip) is where FAE's training speed comes from. An entry is keyed by a hash of what it depends on:
the dataset's image contents, the encoder's (and for latents the compressor's) weights and config, the image
size and the compute dtype. Any change gives a new key, hence a miss; stale entries are never read.

An entry is a directory `<root>/<kind>-<key>/` of `.npy` arrays (opened memory-mapped) and `meta.json`,
written under a temporary name and renamed into place, so a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import ImageDataset
from .fingerprint import json_fingerprint, module_fingerprint
from .io import write_directory_atomically

CACHE_FORMAT = 1


@dataclass
class CachedFeatures:
    """Encoder features N×2×T×D (index 1: the horizontal flip) and the images N×3×S×S (uint8)."""

    features: np.ndarray
    pixels: np.ndarray
    key: str
    hit: bool
    path: Path

    def __len__(self) -> int:
        return self.features.shape[0]

    def batch(self, items: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Features B×T×D (float32) and target images B×3×S×S in [-1, 1] for items = 2·image + flip."""
        images, flips = _split(items)
        features = torch.from_numpy(self.features[images, flips].astype(np.float32))
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[images]))
        flipped = torch.from_numpy(flips.astype(bool))[:, None, None, None]
        pixels = torch.where(flipped, pixels.flip(-1), pixels)
        return features.to(device), (pixels.to(device).float() / 127.5 - 1.0)

    def channel_stats(self, chunk_bytes: int = 64 * 2**20) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the features (over images, flips and tokens), in float64 chunks."""
        total = np.zeros(self.features.shape[-1])
        total_sq = np.zeros_like(total)
        chunk = max(1, chunk_bytes // (8 * int(np.prod(self.features.shape[1:]))))
        for start in range(0, len(self), chunk):
            block = self.features[start : start + chunk].astype(np.float64)
            total += block.sum(axis=(0, 1, 2))
            total_sq += np.square(block, out=block).sum(axis=(0, 1, 2))
        count = np.prod(self.features.shape[:3])
        mean = total / count
        # a constant channel gets std 1, not 0: the decoder then just learns its mean
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


@dataclass
class CachedLatents:
    """Compressor posterior (mean, log-variance), each N×2×C×g×g, for each image and its flip."""

    mean: np.ndarray
    logvar: np.ndarray
    key: str
    hit: bool
    path: Path

    def __len__(self) -> int:
        return self.mean.shape[0]

    def batch(self, items: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        images, flips = _split(items)
        mean = torch.from_numpy(np.ascontiguousarray(self.mean[images, flips]))
        logvar = torch.from_numpy(np.ascontiguousarray(self.logvar[images, flips]))
        return mean.to(device), logvar.to(device)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of latents sampled from the posterior (over images, flips and positions)."""
        mean = self.mean.astype(np.float64)
        axes = (0, 1, 3, 4)
        channel_mean = mean.mean(axis=axes)
        second_moment = (mean**2).mean(axis=axes) + np.exp(self.logvar.astype(np.float64)).mean(axis=axes)
        std = np.sqrt(np.maximum(second_moment - channel_mean**2, 1e-12))
        return channel_mean.tolist(), std.tolist()


def _split(items: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    items = items.cpu().numpy()
    return items // 2, items % 2


def _with_flips(images: torch.Tensor) -> torch.Tensor:
    """B×3×S×S → 2B (image, flip, image, flip...)."""
    return torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1)


class LatentCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_path(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key[:32]}"

    def _lookup(self, kind: str, key: str) -> Path | None:
        path = self.entry_path(kind, key)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return path if meta.get("key") == key else None

    @staticmethod
    def features_key(dataset: ImageDataset, encoder: nn.Module, image_size: int, dtype: str) -> str:
        return json_fingerprint(
            {
                "kind": "features",
                "format": CACHE_FORMAT,
                "dataset": dataset.fingerprint(),
                "encoder": module_fingerprint(encoder),
                "encoder_dtype": str(next(encoder.parameters()).dtype),
                "image_size": image_size,
                "storage_dtype": dtype,
            }
        )

    @staticmethod
    def latents_key(dataset: ImageDataset, encoder: nn.Module, compressor: nn.Module, image_size: int) -> str:
        return json_fingerprint(
            {
                "kind": "latents",
                "format": CACHE_FORMAT,
                "dataset": dataset.fingerprint(),
                "encoder": module_fingerprint(encoder),
                "compressor": module_fingerprint(compressor),
                "dtypes": [str(next(m.parameters()).dtype) for m in (encoder, compressor)],
                "image_size": image_size,
            }
        )

    @torch.no_grad()
    def features(
        self,
        dataset: ImageDataset,
        encoder: nn.Module,
        image_size: int,
        batch_size: int = 32,
        dtype: str = "float16",
    ) -> CachedFeatures:
        """Encoder features of every image and its flip, plus the images at `image_size` (the decoder's)."""
        key = self.features_key(dataset, encoder, image_size, dtype)
        path = self._lookup("features", key)
        hit = path is not None
        if path is None:
            device = next(encoder.parameters()).device
            n, tokens, width = len(dataset), encoder.num_tokens, encoder.feature_dim

            def write(tmp: str) -> None:
                features = np.lib.format.open_memmap(
                    f"{tmp}/features.npy", "w+", dtype, (n, 2, tokens, width)
                )
                pixels = np.lib.format.open_memmap(
                    f"{tmp}/pixels.npy", "w+", np.uint8, (n, 3, image_size, image_size)
                )
                start = 0
                for images in dataset.batches(image_size, batch_size):
                    stop = start + images.shape[0]
                    out = encoder(_with_flips(images).to(device).float() / 255.0)
                    features[start:stop] = out.float().view(-1, 2, tokens, width).cpu().numpy().astype(dtype)
                    pixels[start:stop] = images.numpy()
                    start = stop
                features.flush()
                pixels.flush()
                del features, pixels
                _write_meta(tmp, key, "features", n)

            path = self._write("features", key, write)
        return CachedFeatures(
            features=np.load(path / "features.npy", mmap_mode="r"),
            pixels=np.load(path / "pixels.npy", mmap_mode="r"),
            key=key,
            hit=hit,
            path=path,
        )

    @torch.no_grad()
    def latents(
        self,
        dataset: ImageDataset,
        encoder: nn.Module,
        compressor: nn.Module,
        image_size: int,
        batch_size: int = 32,
    ) -> CachedLatents:
        """The compressor's posterior for every image and its flip (the encoder runs once per image)."""
        key = self.latents_key(dataset, encoder, compressor, image_size)
        path = self._lookup("latents", key)
        hit = path is not None
        if path is None:
            device = next(compressor.parameters()).device
            shape = (len(dataset), 2, *_latent_shape(compressor))

            def write(tmp: str) -> None:
                mean = np.lib.format.open_memmap(f"{tmp}/mean.npy", "w+", np.float32, shape)
                logvar = np.lib.format.open_memmap(f"{tmp}/logvar.npy", "w+", np.float32, shape)
                start = 0
                for images in dataset.batches(image_size, batch_size):
                    stop = start + images.shape[0]
                    features = encoder(_with_flips(images).to(device).float() / 255.0)
                    posterior = compressor(features.to(compressor.dtype))
                    mean[start:stop] = posterior.mean.float().view(-1, 2, *shape[2:]).cpu().numpy()
                    logvar[start:stop] = posterior.logvar.float().view(-1, 2, *shape[2:]).cpu().numpy()
                    start = stop
                mean.flush()
                logvar.flush()
                del mean, logvar
                _write_meta(tmp, key, "latents", shape[0])

            path = self._write("latents", key, write)
        return CachedLatents(
            mean=np.load(path / "mean.npy", mmap_mode="r"),
            logvar=np.load(path / "logvar.npy", mmap_mode="r"),
            key=key,
            hit=hit,
            path=path,
        )

    def _write(self, kind: str, key: str, write: Any) -> Path:
        dest = self.entry_path(kind, key)
        # A directory under this name with another key (a 128-bit prefix collision) or without meta.json
        # (never: entries are renamed into place complete) is replaced.
        return write_directory_atomically(dest, write, overwrite=True)


def _latent_shape(compressor: nn.Module) -> tuple[int, int, int]:
    cfg = compressor.config
    return (cfg.latent_channels, cfg.grid_size, cfg.grid_size)


def _write_meta(tmp: str, key: str, kind: str, count: int) -> None:
    meta = {"key": key, "kind": kind, "format": CACHE_FORMAT, "count": count}
    Path(tmp, "meta.json").write_text(json.dumps(meta, indent=2))
