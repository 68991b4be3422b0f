"""What callers of the engine see: requests, handles, results, callbacks, errors and the test hooks.

Requests use the job contract's names (``n``, ``steps``, ``class_label``...); the engine loop translates them
to the model pipeline's at one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.contract import DEFAULT_STRENGTH, GenerateRequest
from model.errors import InvalidInputError

# step, total, eta in seconds (None until a step time is known)
ProgressCallback = Callable[[int, int, float | None], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class EngineHooks:
    """Test-only behaviour: ``crash_on_prompt`` SIGKILLs the process when a request's prompt equals it (a poison
    job); ``step_delay_s`` sleeps after every denoising step (so a test can act on a job mid-flight)."""

    crash_on_prompt: str = ""
    step_delay_s: float = 0.0


_installed_hooks = EngineHooks()


def install_test_hooks(hooks: EngineHooks) -> None:
    """Make every engine this process builds from settings use ``hooks`` (test worker launchers only)."""
    global _installed_hooks
    _installed_hooks = hooks


def installed_test_hooks() -> EngineHooks:
    """The hooks ``install_test_hooks`` set (none by default): engines built from settings take these."""
    return _installed_hooks


class UnknownModelError(InvalidInputError):
    """The request names a model this worker does not serve."""


@dataclass(frozen=True)
class AdapterSpec:
    adapter_id: str
    local_dir: Path
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, in the job contract's vocabulary (``GenerateRequest``), with the adapter on disk."""

    model: str | None = None  # None: the engine's default model
    prompt: str | None = None
    negative_prompt: str | None = None  # text models: the unconditional branch of guidance
    class_label: int | None = None
    n: int = 1
    steps: int = 50
    guidance_scale: float = 1.0
    guidance_schedule: str = "constant"
    # (t_min, t_max, scale) per interval, guidance_scale outside them (instead of a named schedule)
    guidance_intervals: tuple[tuple[float, float, float], ...] | None = None
    seed: int | None = None
    sampler: str = "euler"
    adapter: AdapterSpec | None = None
    tenant: str | None = None  # tenants share a full batch fairly (see model.batching.DenoisingBatcher)
    image: Any = None  # image-to-image: the input (a PIL image, decoded by the job), started at `strength`
    strength: float = 1.0

    @classmethod
    def from_api(
        cls,
        request: GenerateRequest,
        adapter: AdapterSpec | None = None,
        tenant: str | None = None,
        image: Any = None,
    ) -> GenerationRequest:
        return cls(
            model=request.model,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            class_label=request.class_label,
            n=request.n,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            guidance_schedule=request.guidance_schedule,
            guidance_intervals=None
            if request.guidance_intervals is None
            else tuple((i.t_min, i.t_max, i.scale) for i in request.guidance_intervals),
            seed=request.seed,
            sampler=request.sampler,
            adapter=adapter,
            tenant=tenant,
            image=image,
            strength=_strength(request, image),
        )


def _strength(request: GenerateRequest, image: Any) -> float:
    """The request's strength; without one, the contract's default with an input image (the gateway normally
    fills it in: this is the fallback) and 1 (plain generation) without."""
    if request.strength is not None:
        return request.strength
    return DEFAULT_STRENGTH if image is not None or request.image is not None else 1.0


@dataclass
class GenerationResult:
    model: str
    images: list[Any]  # PIL images
    seeds: list[int]
    denoise_s: float
    decode_s: float
    steps_run: int


@dataclass
class GenerationHandle:
    """A submitted request: wait on it with ``wait()`` or ``result()``, stop it with ``cancel()``.

    The engine thread only writes ``progress`` (in memory) and reads the cancel flag between steps; whatever
    the caller does with them (job-store writes, cancel polling: network I/O) happens on the caller's thread in
    ``wait``, never on the device thread.
    """

    request: GenerationRequest
    model: str
    _future: Future[GenerationResult] = field(default_factory=Future, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    # (step, total, eta_s) after the latest denoising step; one tuple, replaced whole (safe across threads).
    _progress: tuple[int, int, float | None] | None = field(default=None, repr=False)

    @property
    def progress(self) -> tuple[int, int, float | None] | None:
        return self._progress

    def cancel(self) -> None:
        self._cancel.set()

    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result; raises what generation raised (``GenerationCanceled``, ``InvalidInputError``...)."""
        return self._future.result(timeout)

    def wait(
        self,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        poll_s: float = 0.05,
    ) -> GenerationResult:
        """Block until done, every ``poll_s`` reporting new progress and cancelling when ``should_cancel()``;
        the last progress is reported before the result is returned."""
        reported: tuple[int, int, float | None] | None = None
        while True:
            try:
                result = self._future.result(timeout=poll_s)
            except FutureTimeout:
                result = None
            except BaseException:
                self._report(on_progress, reported)
                raise
            reported = self._report(on_progress, reported)
            if result is not None:
                return result
            if should_cancel is not None and not self._cancel.is_set() and should_cancel():
                self.cancel()

    def _report(
        self, on_progress: ProgressCallback | None, reported: tuple[int, int, float | None] | None
    ) -> tuple[int, int, float | None] | None:
        current = self._progress
        if on_progress is not None and current is not None and current != reported:
            on_progress(*current)
        return current
