"""What callers of the engine see: requests, handles, results, callbacks, errors and the test hooks.

Requests use the job contract's names (``n``, ``steps``, ``class_label``...); the engine loop translates them
to the model pipeline's at one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.contract import GenerateRequest
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
    class_label: int | None = None
    n: int = 1
    steps: int = 50
    guidance_scale: float = 1.0
    guidance_schedule: str = "constant"
    seed: int | None = None
    sampler: str = "euler"
    adapter: AdapterSpec | None = None

    @classmethod
    def from_api(cls, request: GenerateRequest, adapter: AdapterSpec | None = None) -> GenerationRequest:
        return cls(
            model=request.model,
            prompt=request.prompt,
            class_label=request.class_label,
            n=request.n,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            guidance_schedule=request.guidance_schedule,
            seed=request.seed,
            sampler=request.sampler,
            adapter=adapter,
        )


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
    """A submitted request: wait on it with ``result()``, stop it with ``cancel()``."""

    request: GenerationRequest
    model: str
    on_progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    _future: Future[GenerationResult] = field(default_factory=Future, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self._cancel.set()

    def cancel_requested(self) -> bool:
        if self._cancel.is_set():
            return True
        if self.should_cancel is not None and self.should_cancel():
            self._cancel.set()
            return True
        return False

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result; raises what generation raised (``GenerationCanceled``, ``InvalidInputError``...)."""
        return self._future.result(timeout)
