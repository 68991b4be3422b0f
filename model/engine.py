"""The denoising engine: step-level batching of whole generation jobs over one pipeline.

Jobs join at the next step and leave when their samples finish or they are canceled; every step is one
(guided) generator call over all active samples, and finished latents are decoded together. The owner (the
worker's engine thread, or a benchmark) calls `add` and `step` from one thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from .batching import Finished, GeneratorFn, Sample, StepBatcher
from .pipeline import FAEPipeline

# on_step(step, total) -> True cancels the job (checked after each of its steps)
StepCallback = Callable[[int, int], bool | None]


@dataclass
class EngineJob:
    key: Hashable
    samples: list[Sample]
    on_step: StepCallback | None = None
    submitted_at: float = field(default_factory=time.perf_counter)

    @property
    def num_steps(self) -> int:
        return self.samples[0].num_steps


@dataclass
class EngineResult:
    key: Hashable
    images: torch.Tensor | None  # n×3×H×W in [0, 1] (None when canceled)
    seeds: list[int]
    canceled: bool = False
    queued_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Running:
    job: EngineJob
    started_at: float
    steps_done: int = 0
    latents: dict[int, torch.Tensor] = field(default_factory=dict)


class DenoisingEngine:
    def __init__(
        self,
        pipeline: FAEPipeline,
        forward: GeneratorFn | None = None,
        max_batch_size: int = 64,
        decode_batch_size: int = 32,
        decoders: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
        | None = None,
    ) -> None:
        """`forward` and `decoders` (feature, pixel) default to the pipeline's own modules; pass compiled,
        bucketed ones (model/compiled.py) to serve at full speed."""
        self.pipeline = pipeline
        self.forward = forward or pipeline.generator
        self.decoders = decoders or (None, None)
        self.max_batch_size = max_batch_size
        self.decode_batch_size = decode_batch_size
        self.batcher: StepBatcher = pipeline.step_batcher()
        self._pending: deque[EngineJob] = deque()
        self._running: dict[Hashable, _Running] = {}
        self.last_batch_size = 0

    @property
    def idle(self) -> bool:
        return not self._pending and not self._running

    @property
    def active_samples(self) -> int:
        return len(self.batcher)

    def add(self, job: EngineJob) -> None:
        if not job.samples:
            raise ValueError("a job needs at least one sample")
        self._pending.append(job)

    def cancel(self, key: Hashable) -> EngineResult | None:
        """Drop a job now, pending or running; returns its canceled result (None if unknown)."""
        for job in list(self._pending):
            if job.key == key:
                self._pending.remove(job)
                return EngineResult(key, None, [s.seed for s in job.samples], canceled=True)
        running = self._running.pop(key, None)
        if running is None:
            return None
        self.batcher.remove([s.key for s in running.job.samples])
        return EngineResult(key, None, [s.seed for s in running.job.samples], canceled=True)

    def _admit(self) -> None:
        # Whole jobs only, oldest first; a job larger than the batch limit still runs once the batch is empty.
        while self._pending:
            job = self._pending[0]
            if self._running and len(self.batcher) + len(job.samples) > self.max_batch_size:
                break
            self._pending.popleft()
            self.batcher.add(job.samples)
            self._running[job.key] = _Running(job, time.perf_counter())

    def step(self) -> list[EngineResult]:
        """Admit waiting jobs, advance every running job by one step, return finished and canceled jobs."""
        self._admit()
        if not self._running:
            return []
        self.last_batch_size = len(self.batcher)
        finished: list[Finished] = self.batcher.step(self.forward)
        for done in finished:
            job_key, index = done.key
            self._running[job_key].latents[index] = done.latent
        results: list[EngineResult] = []
        complete: list[_Running] = []
        for key, running in list(self._running.items()):
            running.steps_done += 1
            job = running.job
            cancel = job.on_step is not None and job.on_step(running.steps_done, job.num_steps)
            if len(running.latents) == len(job.samples):
                complete.append(self._running.pop(key))
            elif cancel:
                result = self.cancel(key)
                assert result is not None
                results.append(result)
        if complete:
            results += self._decode(complete)
        return results

    def _decode(self, complete: list[_Running]) -> list[EngineResult]:
        denoised_at = time.perf_counter()
        latents = torch.cat([r.latents[i] for r in complete for i in range(len(r.job.samples))])
        images = self.pipeline.decode_latents(latents, self.decode_batch_size, *self.decoders)
        decode_s = time.perf_counter() - denoised_at
        results, offset = [], 0
        for running in complete:
            n = len(running.job.samples)
            results.append(
                EngineResult(
                    key=running.job.key,
                    images=images[offset : offset + n],
                    seeds=[s.seed for s in running.job.samples],
                    queued_s=running.started_at - running.job.submitted_at,
                    denoise_s=denoised_at - running.started_at,
                    decode_s=decode_s,
                )
            )
            offset += n
        return results

    def run_until_idle(self) -> list[EngineResult]:
        results: list[EngineResult] = []
        while not self.idle:
            results += self.step()
        return results
