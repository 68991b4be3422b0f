"""Fixtures for the training, fine-tune, adapter and dataset tests: small synthetic image sets and a tiny model
trained through every stage once per session (a few seconds on a CPU)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.synthetic import write_dataset

# Tiny models gain nothing from a second thread, and on a loaded 2-core CI machine OpenMP's spinning threads
# make them many times slower: the training tests run single-threaded.
TRAIN_THREADS = 1


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AtenOps(TorchDispatchMode):
    """Records every aten op run inside it (`with AtenOps() as ops: ...`): to compare two code paths' ops and
    to find device→host syncs, which a CPU run shows as ops even though only a GPU would stall on them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[torch._ops.OpOverload] = []

    def __torch_dispatch__(
        self, func: torch._ops.OpOverload, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        self.ops.append(func)
        return func(*args, **(kwargs or {}))

    @property
    def names(self) -> list[str]:
        return [str(op) for op in self.ops]

    @property
    def syncs(self) -> list[str]:
        """Ops whose result the host must wait for: value reads (`.item()`, `bool(t)` become
        `_local_scalar_dense`) and ops whose output shape depends on the data (`nonzero`, `masked_select`)."""
        data_dependent = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
        return [str(op) for op in self.ops if any(tag in op.tags for tag in data_dependent)]


@pytest.fixture
def aten_ops() -> type[AtenOps]:
    return AtenOps


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 captioned shape images in three class folders."""
    return write_dataset(tmp_path_factory.mktemp("shapes") / "data", 36, "shapes", seed=0, size=48)


@pytest.fixture(scope="session")
def brand_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 brand images, plus a corrupt PNG and a non-image file that must be skipped and counted."""
    directory = write_dataset(tmp_path_factory.mktemp("brand") / "data", 12, "brand", seed=1, size=48)
    (directory / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (directory / "readme.md").write_text("not an image")
    return directory


@dataclass(frozen=True)
class TrainedModel:
    model_dir: Path
    report: dict[str, Any]


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> TrainedModel:
    """The `tiny` preset trained through stages Ia, Ib, ib-recon and II on the shapes set."""
    from model.training.config import TrainConfig
    from model.training.runner import train

    out = tmp_path_factory.mktemp("trained") / "model"
    config = TrainConfig(
        steps=150, recon_steps=30, batch_size=16, learning_rate=2e-3, checkpoint_every=75, ema_decay=0.99
    )
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        report = train(
            data=shapes_dir, out_dir=out, preset="tiny", stage="all", config=config, show_progress=False
        )
    finally:
        torch.set_num_threads(before)
    return TrainedModel(out, report)
