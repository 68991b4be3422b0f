"""Where stages Ia, Ib and ib-recon get (frozen-encoder features, target pixels) for each step.

- `CachedBatches`: from the on-disk feature cache (`model.latent_cache`), any item in any order.
- `StreamedBatches`: from tar shards (`model.shards`), read front to back by a background thread that
  decodes the next batches while the current step runs, with the frozen encoder run online (bf16 autocast on
  a GPU, float32 on a CPU). This is the path for datasets whose feature cache would not fit: ImageNet's is
  N × 2 flips × 256 × 1536 fp16 ≈ 2 TB.

Both follow one order on sharded data (`ShardOrder`): per epoch, the shards in a seeded random order and,
within a shard, its images and their flips in a seeded random order. Only a shard's images are held at a time,
and the cached path on the same shards, with a float32 cache, feeds the model the same batches, hence the
same losses. The position in that order (epoch, shard, offset) is saved in every checkpoint and a resumed
run starts reading there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from ..fingerprint import json_fingerprint, module_fingerprint
from ..latent_cache import CachedFeatures, _with_flips
from ..shards import ShardedDataset
from .train_loop import BatchSampler, autocast, derive_seed

FEATURE_SOURCES = ("auto", "cache", "stream")


class FeatureBatches(Protocol):
    key: str

    def __len__(self) -> int: ...

    def batch(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Features B×T×D (float32) and target images B×3×S×S in [-1, 1] for training step `step`."""

    def channel_stats(self) -> tuple[list[float], list[float]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Stop any background reader (called when the stage ends)."""


@dataclass(frozen=True)
class StreamPosition:
    epoch: int
    shard: int  # rank of the shard in this epoch's shard order
    offset: int  # items of that shard already read

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "shard": self.shard, "offset": self.offset}


class ShardOrder:
    """The order of items (2·image + flip) over endless epochs of a sharded dataset; a pure function of the
    seed, so that any position can be recomputed, and the same for the cached and the streamed paths."""

    def __init__(self, shard_sizes: list[int], batch_size: int, seed: int, task: str) -> None:
        if not shard_sizes or min(shard_sizes) < 1:
            raise InvalidInputError("a sharded dataset needs at least one image in every shard")
        self.sizes, self.batch_size, self.seed, self.task = list(shard_sizes), batch_size, seed, task
        self.first_image = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.items_per_epoch = 2 * sum(self.sizes)
        self._cached: tuple[int, int, np.ndarray] | None = None

    def shard_order(self, epoch: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.task, "shards", epoch))
        return torch.randperm(len(self.sizes), generator=gen).numpy()

    def shard_items(self, epoch: int, shard: int) -> np.ndarray:
        """Items of shard `shard` (its index in the dataset) in this epoch's order, as 2·image + flip."""
        if self._cached is not None and self._cached[:2] == (epoch, shard):
            return self._cached[2]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.task, "shard", epoch, shard))
        local = torch.randperm(2 * self.sizes[shard], generator=gen).numpy()
        items = local + 2 * self.first_image[shard]
        self._cached = (epoch, shard, items)
        return items

    def position(self, item_number: int) -> StreamPosition:
        epoch, within = divmod(item_number, self.items_per_epoch)
        order = self.shard_order(epoch)
        for rank, shard in enumerate(order):
            size = 2 * self.sizes[shard]
            if within < size:
                return StreamPosition(epoch, rank, within)
            within -= size
        raise AssertionError("unreachable: within < items_per_epoch")

    def item_number(self, position: StreamPosition) -> int:
        """Inverse of `position` (a position at the end of a shard equals the start of the next)."""
        order = self.shard_order(position.epoch)
        before = sum(2 * self.sizes[shard] for shard in order[: position.shard])
        return position.epoch * self.items_per_epoch + before + position.offset

    def items_from(self, start: StreamPosition) -> Iterator[tuple[StreamPosition, int, int]]:
        """(position, shard index, item) from `start` on, forever."""
        epoch, rank, offset = start.epoch, start.shard, start.offset
        while True:
            order = self.shard_order(epoch)
            while rank < len(order):
                shard = int(order[rank])
                items = self.shard_items(epoch, shard)
                for k in range(offset, len(items)):
                    yield StreamPosition(epoch, rank, k), shard, int(items[k])
                rank, offset = rank + 1, 0
            epoch, rank = epoch + 1, 0

    def indices(self, step: int) -> torch.Tensor:
        """The items of training step `step` (the `BatchSampler` interface, for the cached path)."""
        stream = self.items_from(self.position(step * self.batch_size))
        return torch.tensor([next(stream)[2] for _ in range(self.batch_size)])


class CachedBatches:
    def __init__(self, features: CachedFeatures, sampler: BatchSampler | ShardOrder) -> None:
        self.features, self.sampler, self.key = features, sampler, features.key

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features.batch(self.sampler.indices(step), device)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        return self.features.channel_stats()

    def state_dict(self) -> dict[str, Any]:
        return {}  # the order is a function of the step

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _pixels_with_flip(image: torch.Tensor, item: int) -> torch.Tensor:
    return image.flip(-1) if item % 2 else image


class _ShardReader:
    """A background thread that reads shards in `order` from `start` and queues ready batches of
    (positions after each batch, items, uint8 pixels with flips applied); `prefetch` batches ahead."""

    def __init__(
        self, dataset: ShardedDataset, order: ShardOrder, start: StreamPosition, size: int, prefetch: int
    ) -> None:
        self.dataset, self.order, self.start, self.size = dataset, order, start, size
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fae-shard-reader", daemon=True)
        self.thread.start()

    def _put(self, value: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            loaded: tuple[int, int, list[torch.Tensor]] | None = None  # (epoch, shard, images)
            items: list[int] = []
            pixels: list[torch.Tensor] = []
            for position, shard, item in self.order.items_from(self.start):
                if loaded is None or loaded[:2] != (position.epoch, shard):
                    # one shard's images at a time, decoded in stored order
                    loaded = (position.epoch, shard, list(self.dataset.iter_shard(shard, self.size)))
                image = loaded[2][item // 2 - int(self.order.first_image[shard])]
                items.append(item)
                pixels.append(_pixels_with_flip(image, item))
                if len(items) == self.order.batch_size:
                    after = StreamPosition(position.epoch, position.shard, position.offset + 1)
                    if not self._put((after, torch.tensor(items), torch.stack(pixels))):
                        return
                    items, pixels = [], []
        except BaseException as exc:  # handed to the training thread, which raises it
            self._put(exc)

    def next(self) -> tuple[StreamPosition, torch.Tensor, torch.Tensor]:
        value = self.queue.get()
        if isinstance(value, BaseException):
            raise value
        return value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class StreamedBatches:
    """Batches read from shards by a prefetching thread and encoded online by the frozen encoder."""

    def __init__(
        self,
        dataset: ShardedDataset,
        encoder: nn.Module,
        image_size: int,
        order: ShardOrder,
        device: torch.device,
        prefetch: int = 4,
        stats_images: int = 50_000,
    ) -> None:
        self.dataset, self.encoder, self.image_size, self.order = dataset, encoder, image_size, order
        self.device, self.prefetch, self.stats_images = device, prefetch, stats_images
        self.key = json_fingerprint(
            {
                "kind": "streamed-features",
                "dataset": dataset.fingerprint(),
                "encoder": module_fingerprint(encoder),
                "image_size": image_size,
                "online_dtype": "bfloat16" if device.type == "cuda" else "float32",
            }
        )
        self._reader: _ShardReader | None = None
        self._next_step: int | None = None
        self._resume_at: StreamPosition | None = None
        self.position = StreamPosition(0, 0, 0)

    def __len__(self) -> int:
        return len(self.dataset)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen encoder online: bf16 autocast on a GPU, float32 on a CPU; float32 out."""
        with autocast(self.device):
            return self.encoder(pixels.to(self.device).float() / 255.0).float()

    def batch(self, step: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._reader is None or step != self._next_step:
            self.close()
            start = self.order.position(step * self.order.batch_size)
            if self._resume_at is not None:  # resuming: start reading at the checkpoint's shard and offset
                if self.order.item_number(self._resume_at) != step * self.order.batch_size:
                    raise InvalidInputError(
                        f"the checkpoint's stream position {self._resume_at.to_dict()} does not match step "
                        f"{step} ({start.to_dict()}): the shards or the batch size changed"
                    )
                start, self._resume_at = self._resume_at, None
            self._reader = _ShardReader(self.dataset, self.order, start, self.image_size, self.prefetch)
        self.position, _, pixels = self._reader.next()
        self._next_step = step + 1
        features = self.encode(pixels)
        return features.to(device), pixels.to(device).float() / 127.5 - 1.0

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std over the first `stats_images` images and their flips, in float64
        (the cache computes the same over all of its images)."""
        total = torch.zeros(self.encoder.feature_dim, dtype=torch.float64)
        total_sq, count = torch.zeros_like(total), 0
        seen = 0
        for images in self.dataset.batches(self.image_size, 32):
            images = images[: self.stats_images - seen]
            features = self.encode(_with_flips(images)).double().cpu()
            total += features.sum(dim=(0, 1))
            total_sq += features.square().sum(dim=(0, 1))
            count += features.shape[0] * features.shape[1]
            seen += images.shape[0]
            if seen >= self.stats_images:
                break
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
        return mean.tolist(), torch.where(std > 1e-6, std, torch.ones_like(std)).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"stream_position": self.position.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("stream_position")
        if saved is None:
            raise InvalidInputError(
                "the checkpoint has no stream position: it was not written by a streamed run"
            )
        self._resume_at = StreamPosition(**saved)
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def feature_cache_bytes(num_images: int, encoder: nn.Module, image_size: int, dtype: str) -> int:
    """What the feature cache of `num_images` would take: features of each image and its flip, plus pixels."""
    bytes_per_value = 2 if dtype == "float16" else 4
    features = num_images * 2 * encoder.num_tokens * encoder.feature_dim * bytes_per_value
    return features + num_images * 3 * image_size * image_size


def choose_feature_source(choice: str, sharded: bool, cache_bytes: int, budget_gb: float) -> str:
    """ "cache" or "stream": `auto` streams sharded data whose cache would pass the budget."""
    if choice not in FEATURE_SOURCES:
        raise InvalidInputError(f"feature source must be one of {', '.join(FEATURE_SOURCES)}; got {choice!r}")
    if choice == "stream" and not sharded:
        raise InvalidInputError(
            "streaming reads tar shards: pack the folder first (`fae pack-shards --images DIR --out SHARDS`)"
        )
    if choice == "auto":
        return "stream" if sharded and cache_bytes > budget_gb * 1e9 else "cache"
    return choice
