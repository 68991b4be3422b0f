"""The training loop shared by every stage and the LoRA fine-tune: seeds, checkpoints, resume, progress, cancel.

Reproducibility: every step draws its randomness (batch noise, timesteps, dropout of conditions) from a
generator seeded by (run seed, task, step), and the data order of each epoch from (run seed, task, epoch).
A run resumed from a checkpoint therefore replays exactly the steps an uninterrupted run would have taken;
the checkpoint holds the weights, optimiser and LR-schedule state and EMA, nothing else is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import InvalidInputError, TrainingCanceled
from .checkpoints import CheckpointStore
from .progress import CancelCheck, ProgressReporter, TrainingProgressCallback


def derive_seed(seed: int, *parts: object) -> int:
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow and changes results)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_multiplier(schedule: str, warmup: int, total: int):
    """Linear warm-up, then constant or cosine decay to zero at `total`."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class BatchSampler:
    """Batch `step` of an endless sequence of epoch permutations of `n` items, without replacement within an
    epoch; computed from the step alone so that a resumed run sees the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int, task: str) -> None:
        if n < 1:
            raise InvalidInputError("the training set is empty")
        self.n, self.batch_size, self.seed, self.task = n, batch_size, seed, task
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.task, "epoch", epoch))
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=gen)
        return self._order

    def indices(self, step: int) -> torch.Tensor:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return torch.stack([self._permutation(p // self.n)[p % self.n] for p in positions])


class TrainingTask(Protocol):
    name: str
    images_per_step: int

    def fingerprint(self) -> dict[str, Any]:
        """What must be equal for a checkpoint to be resumed (settings, data and base identities)."""

    def train_step(self, step: int, rng: torch.Generator) -> float:
        """One optimisation step; returns the loss."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finish(self) -> None:
        """Called once all steps are done (e.g. copy EMA weights into the model)."""


@dataclass
class LoopResult:
    task: str
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)  # the steps run by this call
    duration_s: float = 0.0
    images_per_s: float = 0.0

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def report(self) -> dict[str, Any]:
        head = self.losses[: max(1, len(self.losses) // 10)]
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return {
            "steps": self.steps,
            "resumed_from_step": self.start_step,
            "final_loss": self.final_loss,
            "loss_start": sum(head) / len(head) if head else None,
            "loss_end": sum(tail) / len(tail) if tail else None,
            "duration_s": round(self.duration_s, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


@dataclass
class LoopOptions:
    steps: int
    seed: int
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    progress_callback: TrainingProgressCallback | None = None
    cancel_check: CancelCheck | None = None
    show_progress: bool | None = None


def run_loop(task: TrainingTask, options: LoopOptions, device: torch.device) -> LoopResult:
    """Run `task` from its last checkpoint (when resuming) to `options.steps`, checkpointing as it goes."""
    store = None
    start = 0
    if options.checkpoint_dir is not None:
        store = CheckpointStore(options.checkpoint_dir, keep=options.keep_checkpoints)
        store.remove_stale_temporaries()
        latest = store.latest()
        if latest is not None:
            if not options.resume:
                raise InvalidInputError(
                    f"{options.checkpoint_dir} already holds checkpoints (last: step {latest}): resume the run "
                    "(--resume) or choose another output directory"
                )
            task.load_state_dict(store.load(latest, task.fingerprint(), map_location=device))
            start = latest
    if start > options.steps:
        raise InvalidInputError(
            f"the checkpoint is at step {start}, past the {options.steps} steps asked for"
        )

    result = LoopResult(task=task.name, steps=options.steps, start_step=start)
    reporter = ProgressReporter(
        options.steps,
        start,
        task.images_per_step,
        task.name,
        options.progress_callback,
        options.show_progress,
    )
    began = time.perf_counter()
    # Denormal floats (e.g. from sharp attention softmaxes) make CPU matmuls several times slower.
    flush_denormal = torch.set_flush_denormal(True) if device.type == "cpu" else False
    try:
        for step in range(start, options.steps):
            seed = derive_seed(options.seed, task.name, "step", step)
            torch.manual_seed(seed)  # anything that still draws from the global generators
            rng = torch.Generator(device).manual_seed(seed)
            loss = task.train_step(step, rng)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{task.name}: the loss became {loss} at step {step + 1}; lower the learning rate"
                )
            result.losses.append(loss)
            reporter.update(step + 1, loss)
            if options.cancel_check is not None and options.cancel_check():
                raise TrainingCanceled(f"{task.name} canceled after step {step + 1} of {options.steps}")
            done = step + 1
            if store is not None and (done % options.checkpoint_every == 0 or done == options.steps):
                store.save(done, task.state_dict(), task.fingerprint())
    finally:
        reporter.close()
        if flush_denormal:
            torch.set_flush_denormal(False)
    result.duration_s = time.perf_counter() - began
    result.images_per_s = reporter.images_per_second(options.steps)
    task.finish()
    return result
