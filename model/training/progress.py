"""Progress of a training run: a tqdm bar (loss, images/s) on a terminal and structured updates for the service.

The callback is called with keywords after every step: `callback(step=, total=, eta_s=, loss=)`, which is the
signature of the worker's progress writer (it throttles its own store writes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol


class TrainingProgressCallback(Protocol):
    """Told after every training step; keywords so the worker's progress writer can take them by name."""

    def __call__(self, *, step: int, total: int, eta_s: float | None, loss: float) -> None: ...


CancelCheck = Callable[[], bool]


class ProgressReporter:
    def __init__(
        self,
        total: int,
        start_step: int,
        images_per_step: int,
        description: str,
        callback: TrainingProgressCallback | None = None,
        show_bar: bool | None = None,
    ) -> None:
        from tqdm.auto import tqdm

        self.total, self.start_step, self.images_per_step = total, start_step, images_per_step
        self.callback = callback
        self.started = time.perf_counter()
        self.last_loss: float | None = None
        # show_bar None: only on a terminal (tqdm's disable=None).
        self.bar = tqdm(
            total=total,
            initial=start_step,
            desc=description,
            unit="step",
            file=sys.stderr,
            disable=None if show_bar is None else not show_bar,
            dynamic_ncols=True,
        )

    def images_per_second(self, step: int) -> float:
        elapsed = time.perf_counter() - self.started
        return (step - self.start_step) * self.images_per_step / elapsed if elapsed > 0 else 0.0

    def eta_s(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (self.total - step)

    def update(self, step: int, loss: float) -> None:
        self.last_loss = loss
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{self.images_per_second(step):.1f}", refresh=False)
        if self.callback is not None:
            self.callback(step=step, total=self.total, eta_s=self.eta_s(step), loss=loss)

    def close(self) -> None:
        self.bar.close()
