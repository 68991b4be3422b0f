"""Step-level batching: many samples, each at its own denoising step, advanced by one generator call per step.

Each sample carries its own seed (noise generator), step count, guidance schedule, sampler and condition.
Samples join between steps (`add`) and leave when finished or canceled (`remove`), like continuous batching in
LLM servers; this works because the generator takes a per-sample timestep. `FAEPipeline.__call__` and the
worker's engine both denoise through `StepBatcher`, so a batch of requests gives the same images as each
request alone (up to floating-point reassociation in batched matrix products).

The denoising state (latents, noise, timesteps and their differences, the guidance combination) is fp32
whatever the generator's dtype; only the generator's input is cast to it. Each step is planned on the host,
which knows every sample's grid, guidance scale, sampler and adapter slot: the device is never read back
mid-loop, and small per-step tensors reach it by pinned, non-blocking copies.

`DenoisingBatcher` batches whole jobs on top of it: jobs join at the next step and leave when their samples
finish or they are canceled, and finished latents are decoded together. Its owner (the worker's engine
thread, or a benchmark) calls `add` and `step` from one thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .adapters import NO_ADAPTER
from .guidance import Condition, GuidanceSchedule, guided_rows, guided_velocity
from .img2img import noised, start_grid
from .scheduling import FlowMatchingScheduler, check_steps

if TYPE_CHECKING:  # the pipeline builds its batchers from this module
    from .pipeline import FAEPipeline

GeneratorFn = Callable[..., torch.Tensor]
# on_step(step, total) after each denoising step of a job or pipeline call; True cancels it
StepCallback = Callable[[int, int], bool | None]


@dataclass
class Sample:
    """One image to denoise. `cond`/`uncond` are single-row condition dicts (batch dimension 1); `uncond` is the
    null condition or, for a request with a negative prompt, that prompt's encoding (rows are per sample, so
    samples with different unconditional branches share one guided call).

    `adapter_slot` is its LoRA slot (model/adapters/slots.py; 0 for none), kept on the host so that a batch
    in which no sample uses an adapter calls the generator without `adapter_slots`, i.e. on its plain path.
    """

    key: Hashable
    seed: int
    num_steps: int
    cond: Condition
    uncond: Condition
    schedule: GuidanceSchedule = field(default_factory=lambda: GuidanceSchedule.constant(1.0))
    stochastic: bool = False
    adapter_slot: int = NO_ADAPTER
    # Image-to-image (model/img2img.py): the input's normalised latent, noised to `start_t` with this sample's
    # seed; `num_steps` then counts the steps from `start_t` to 0. None: plain generation from noise (t = 1).
    init_latent: torch.Tensor | None = None
    start_t: float = 1.0


@dataclass
class Finished:
    key: Hashable
    seed: int
    latent: torch.Tensor  # 1×C×g×g, normalised latent space


class StepBatcher:
    """The set of samples being denoised together on one model (one latent shape, one condition type)."""

    def __init__(
        self,
        scheduler: FlowMatchingScheduler,
        latent_shape: tuple[int, int, int],
        device: torch.device | str,
        model_dtype: torch.dtype = torch.float32,
    ) -> None:
        """`model_dtype` is the generator's: only its input is cast to it, the state stays fp32 (in bf16, a
        250-step grid has zero-length intervals and Euler increments fall below the latents' rounding
        step)."""
        self.scheduler = scheduler
        self.latent_shape = tuple(latent_shape)
        self.device = torch.device(device)
        self.model_dtype = model_dtype
        self._samples: list[Sample] = []
        self._grids: list[list[float]] = []  # each sample's timesteps, on the host (read every step)
        self._noise: list[torch.Tensor | None] = []  # each SDE sample's noise for every step (steps×C×g×g)
        self._no_noise = torch.zeros(self.latent_shape, device=self.device)  # ODE rows of a stochastic batch
        self._step_index: list[int] = []
        self._x: torch.Tensor | None = None
        self._cond: Condition = {}
        self._uncond: Condition = {}

    # --- membership ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._samples)

    @property
    def keys(self) -> list[Hashable]:
        return [s.key for s in self._samples]

    def progress(self, key: Hashable) -> tuple[int, int]:
        i = self.keys.index(key)
        return self._step_index[i], self._samples[i].num_steps

    def _new_generator(self, seed: int) -> torch.Generator:
        device = self.device if self.device.type in ("cpu", "cuda") else torch.device("cpu")
        return torch.Generator(device).manual_seed(seed)

    def _draw(self, generator: torch.Generator, rows: int) -> torch.Tensor:
        noise = torch.randn((rows, *self.latent_shape), generator=generator, device=generator.device)
        return noise.to(self.device)

    def _on_device(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A small host-built tensor on the device without stalling it: on CUDA, a pinned non-blocking copy
        (the caching host allocator keeps the pinned block alive until the copy has run)."""
        host = torch.tensor(values, dtype=dtype)
        if self.device.type != "cuda":
            return host.to(self.device)
        return host.pin_memory().to(self.device, non_blocking=True)

    def add(self, samples: Sequence[Sample]) -> None:
        """Join samples; they take their first step at the next `step()`."""
        if not samples:
            return
        new_x, cond_rows, uncond_rows = [], [], []
        for sample in samples:
            check_steps(sample.num_steps)
            generator = self._new_generator(sample.seed)
            noise = self._draw(generator, 1)  # drawn alike for every sample: strength 1 is plain generation
            grid = start_grid(self.scheduler, sample.num_steps, sample.start_t)
            if sample.init_latent is not None and sample.start_t < 1.0:
                noise = noised(sample.init_latent.to(self.device), noise, grid[0])
            new_x.append(noise)
            # An SDE sample draws its noise for every step now, from its own generator: it depends on the seed
            # alone (never on the batch), and the step loop draws nothing.
            self._noise.append(self._draw(generator, sample.num_steps) if sample.stochastic else None)
            self._samples.append(sample)
            self._grids.append(grid)
            self._step_index.append(0)
            cond_rows.append(sample.cond)
            uncond_rows.append(sample.uncond)
        x = torch.cat(new_x)
        self._x = x if self._x is None else torch.cat([self._x, x])
        self._cond = _append_rows(self._cond, cond_rows, self.device)
        self._uncond = _append_rows(self._uncond, uncond_rows, self.device)

    def remove(self, keys: Sequence[Hashable]) -> list[Sample]:
        """Drop samples (canceled requests); returns what was removed."""
        drop = set(keys)
        keep = [i for i, s in enumerate(self._samples) if s.key not in drop]
        removed = [s for s in self._samples if s.key in drop]
        self._keep_rows(keep)
        return removed

    def _keep_rows(self, keep: list[int]) -> None:
        self._samples = [self._samples[i] for i in keep]
        self._grids = [self._grids[i] for i in keep]
        self._noise = [self._noise[i] for i in keep]
        self._step_index = [self._step_index[i] for i in keep]
        if not keep:
            self._x, self._cond, self._uncond = None, {}, {}
            return
        index = self._on_device(keep, torch.long)
        assert self._x is not None
        self._x = self._x.index_select(0, index)
        self._cond = {k: v.index_select(0, index) for k, v in self._cond.items()}
        self._uncond = {k: v.index_select(0, index) for k, v in self._uncond.items()}

    # --- denoising ------------------------------------------------------------------------------------
    def step(self, model: GeneratorFn) -> list[Finished]:
        """Advance every sample by one step with one (guided) model call; return and drop finished samples."""
        if not self._samples or self._x is None:
            return []
        samples = self._samples
        t_now = [grid[i] for grid, i in zip(self._grids, self._step_index, strict=True)]
        t_next = [grid[i + 1] for grid, i in zip(self._grids, self._step_index, strict=True)]
        dts = [a - b for a, b in zip(t_now, t_next, strict=True)]  # from the float64 grids
        scales = [s.schedule.scale_at(t) for s, t in zip(samples, t_now, strict=True)]
        stochastic = [float(s.stochastic) for s in samples]
        rows = self._on_device([t_now, t_next, dts, scales, stochastic], torch.float32)  # one copy
        t, tn, dt, scale, sde = rows.unbind(0)
        guided = guided_rows(scales)
        cond, uncond = self._cond, self._uncond
        if any(s.adapter_slot != NO_ADAPTER for s in samples):
            slots = self._on_device([s.adapter_slot for s in samples], torch.long)
            cond, uncond = {**cond, "adapter_slots": slots}, {**uncond, "adapter_slots": slots}
        v = guided_velocity(
            model,
            self._x,
            t,
            cond,
            uncond,
            scale,
            self._on_device(guided, torch.long) if guided else None,
            self.model_dtype,
        )
        noise = None
        if any(stochastic):
            noise = torch.stack(
                [
                    self._no_noise if n is None else n[i]
                    for n, i in zip(self._noise, self._step_index, strict=True)
                ]
            )
        self._x = self.scheduler.step(self._x, v, t, tn, sde > 0, noise, dt)
        self._step_index = [i + 1 for i in self._step_index]
        done = [i for i, s in enumerate(self._samples) if self._step_index[i] >= s.num_steps]
        if not done:
            return []
        finished = [Finished(self._samples[i].key, self._samples[i].seed, self._x[i : i + 1]) for i in done]
        done_set = set(done)
        self._keep_rows([i for i in range(len(self._samples)) if i not in done_set])
        return finished


@dataclass
class DenoisingJob:
    key: Hashable
    samples: list[Sample]
    on_step: StepCallback | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    owner: Hashable = (
        None  # who asked (the worker passes the tenant): admission shares the batch among owners
    )

    @property
    def num_steps(self) -> int:
        return self.samples[0].num_steps


@dataclass
class DenoisingResult:
    key: Hashable
    images: torch.Tensor | None  # n×3×H×W in [0, 1] (None when canceled)
    seeds: list[int]
    canceled: bool = False
    queued_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Running:
    job: DenoisingJob
    started_at: float
    steps_done: int = 0
    latents: dict[int, torch.Tensor] = field(default_factory=dict)


class DenoisingBatcher:
    """Whole jobs over one pipeline's `StepBatcher`: admitted oldest first within `max_batch_size`."""

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
        self._pending: deque[DenoisingJob] = deque()
        self._running: dict[Hashable, _Running] = {}
        self.last_batch_size = 0

    @property
    def idle(self) -> bool:
        return not self._pending and not self._running

    def add(self, job: DenoisingJob) -> None:
        if not job.samples:
            raise ValueError("a job needs at least one sample")
        self._pending.append(job)

    def is_pending(self, key: Hashable) -> bool:
        """Whether the job waits for room in the batch (added, not yet admitted)."""
        return any(job.key == key for job in self._pending)

    def cancel(self, key: Hashable) -> DenoisingResult | None:
        """Drop a job now, pending or running; returns its canceled result (None if unknown)."""
        for job in list(self._pending):
            if job.key == key:
                self._pending.remove(job)
                return DenoisingResult(key, None, [s.seed for s in job.samples], canceled=True)
        running = self._running.pop(key, None)
        if running is None:
            return None
        self.batcher.remove([s.key for s in running.job.samples])
        return DenoisingResult(key, None, [s.seed for s in running.job.samples], canceled=True)

    def _admit(self) -> None:
        # Whole jobs only. The next job is the oldest of the owner with the fewest samples running, so one
        # owner's burst cannot hold the batch while another's job waits; a job larger than the batch limit still
        # runs once the batch is empty.
        while self._pending:
            job = self._next_pending()
            if self._running and len(self.batcher) + len(job.samples) > self.max_batch_size:
                break
            self._pending.remove(job)
            self.batcher.add(job.samples)
            self._running[job.key] = _Running(job, time.perf_counter())

    def _next_pending(self) -> DenoisingJob:
        running: dict[Hashable, int] = {}
        for entry in self._running.values():
            running[entry.job.owner] = running.get(entry.job.owner, 0) + len(entry.job.samples)
        return min(self._pending, key=lambda job: running.get(job.owner, 0))  # min keeps the oldest of ties

    def step(self) -> list[DenoisingResult]:
        """Admit waiting jobs, advance every running job by one step, return finished and canceled jobs."""
        self._admit()
        if not self._running:
            return []
        self.last_batch_size = len(self.batcher)
        finished: list[Finished] = self.batcher.step(self.forward)
        for done in finished:
            job_key, index = done.key
            self._running[job_key].latents[index] = done.latent
        results: list[DenoisingResult] = []
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

    def _decode(self, complete: list[_Running]) -> list[DenoisingResult]:
        denoised_at = time.perf_counter()
        latents = torch.cat([r.latents[i] for r in complete for i in range(len(r.job.samples))])
        images = self.pipeline.decode_latents(latents, self.decode_batch_size, *self.decoders)
        decode_s = time.perf_counter() - denoised_at
        results, offset = [], 0
        for running in complete:
            n = len(running.job.samples)
            results.append(
                DenoisingResult(
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

    def run_until_idle(self) -> list[DenoisingResult]:
        results: list[DenoisingResult] = []
        while not self.idle:
            results += self.step()
        return results


def _append_rows(existing: Condition, rows: list[Condition], device: torch.device) -> Condition:
    new = {k: torch.cat([r[k] for r in rows]).to(device) for k in rows[0]}
    if not existing:
        return new
    return {k: torch.cat([existing[k], new[k]]) for k in existing}
