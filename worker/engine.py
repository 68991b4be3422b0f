"""The generation engine: it owns the loaded pipelines and is the only code that calls the model.

Callers ``submit`` a :class:`GenerationRequest` and get a :class:`GenerationHandle` back; one engine thread
owns the device and runs what was submitted. Today it runs one request at a time; the step-level batching
issue replaces ``_run_one`` with a loop that keeps a set of active samples and runs one generator forward over
all of them per step (the model stack's ``model.engine.DenoisingEngine``), without changing this API:
handles, progress and cancel callbacks stay as they are.

Test-only behaviour is an :class:`EngineHooks` object, never a setting: tests pass one to the constructor, or
install one with :func:`install_test_hooks` in a worker process they start themselves.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from core import metrics
from core.contract import GenerateRequest
from core.settings import Settings
from model.errors import GenerationCanceled, InvalidInputError

log = logging.getLogger("fae.worker.engine")

# step, total, eta in seconds (None until a step time is known)
ProgressCallback = Callable[[int, int, float | None], None]
CancelCheck = Callable[[], bool]
T = TypeVar("T")


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


class UnknownModelError(InvalidInputError):
    """The request names a model this worker does not serve."""


@dataclass(frozen=True)
class AdapterSpec:
    adapter_id: str
    local_dir: Path
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    model: str | None = None  # None: the engine's default model
    prompt: str | None = None
    class_label: int | None = None
    num_images: int = 1
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
            num_images=request.n,
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

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result; raises what generation raised (``GenerationCanceled``, ``InvalidInputError``...)."""
        return self._future.result(timeout)


class Engine:
    """Owns the pipelines (model name → pipeline) and the thread that runs them on the device."""

    def __init__(
        self,
        pipelines: Mapping[str, Any],
        *,
        default_model: str | None = None,
        device: str = "cpu",
        hooks: EngineHooks | None = None,
        max_batch_size: int = 32,
        accelerated: Mapping[str, Mapping[str, Any]] | None = None,
        adapter_slots: int = 0,
        adapter_max_rank: int = 32,
    ) -> None:
        """`accelerated`: per model, compiled and bucketed forwards from `model.compiled.accelerate_pipeline`
        (generator, feature_decoder, pixel_decoder); models without one run eagerly. `adapter_slots` > 0
        attaches that many LoRA slots to every generator (model/lora_slots.py): jobs with different adapters
        then share one batch; 0 keeps peft (one active adapter, one group per adapter)."""
        if not pipelines:
            raise ValueError("an engine needs at least one pipeline")
        self._pipelines = dict(pipelines)
        self.default_model = default_model or next(iter(self._pipelines))
        if self.default_model not in self._pipelines:
            raise ValueError(f"default model {self.default_model!r} is not among {sorted(self._pipelines)}")
        self.device = device
        self._hooks = hooks or EngineHooks()
        self.max_batch_size = max_batch_size
        self._fast: dict[str, Mapping[str, Any]] = dict(accelerated or {})
        self._pending: queue.Queue[GenerationHandle | _Exclusive | None] = queue.Queue()
        self._slots: dict[str, Any] = {}  # model -> model.lora_slots.AdapterSlots
        if adapter_slots > 0:
            from model.lora_slots import AdapterSlots
            from model.pipeline import MAX_IMAGES_PER_CALL

            # Rows per generator call: a batch's conditional plus unconditional rows (a bucket never exceeds
            # that: larger calls are split); one job of the largest size may run alone above max_batch_size.
            max_rows = 2 * max(max_batch_size, MAX_IMAGES_PER_CALL)
            for name, pipe in self._pipelines.items():
                self._slots[name] = AdapterSlots.attach(
                    pipe.generator, adapter_slots, adapter_max_rank, max_batch=max_rows
                )
        self._deferred: list[GenerationHandle] = []  # admitted, waiting for an adapter slot to free up
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ready = False

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Load every configured model onto the configured device (no warm-up: call ``warmup``)."""
        from model.compiled import accelerate_pipeline, configure_compile_cache
        from model.devices import resolve_device, resolve_dtype
        from model.loading import load_pipeline  # heavy: imported only where models load

        dirs = settings.catalog.model_dirs()
        if not dirs:
            raise ValueError("no models configured: set FAE_MODELS=name=/path/to/model[,name2=...]")
        device, dtype = str(resolve_device(settings.engine.device)), resolve_dtype(settings.engine.dtype)
        pipelines: dict[str, Any] = {}
        for name, path in dirs.items():
            started = time.perf_counter()
            pipelines[name] = load_pipeline(path, device=device, dtype=dtype)
            seconds = round(time.perf_counter() - started, 3)
            log.info(
                "model loaded", extra={"model": name, "path": str(path), "device": device, "seconds": seconds}
            )
        accelerated: dict[str, Any] = {}
        if settings.engine.compile or settings.engine.cuda_graphs:
            configure_compile_cache(settings.engine.compile_cache_dir)
            # Guidance can double a batch's rows: buckets reach twice the sample limit.
            buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= 2 * settings.engine.max_batch_size]
            for name, pipe in pipelines.items():
                accelerated[name] = accelerate_pipeline(
                    pipe, buckets, compile=settings.engine.compile, cuda_graphs=settings.engine.cuda_graphs
                )
        return cls(
            pipelines,
            max_batch_size=settings.engine.max_batch_size,
            accelerated=accelerated,
            default_model=settings.catalog.default_model or None,
            device=device,
            hooks=_installed_hooks,
            adapter_slots=settings.engine.adapter_slots,
            adapter_max_rank=settings.engine.adapter_max_rank,
        )

    # --- public API ----------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._pipelines)

    def pipeline(self, model: str | None = None) -> Any:
        return self._pipelines[self.resolve_model(model)]

    def resolve_model(self, model: str | None) -> str:
        name = model or self.default_model
        if name not in self._pipelines:
            raise UnknownModelError(f"unknown model {name!r}; this worker serves {sorted(self._pipelines)}")
        return name

    def submit(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationHandle:
        """Queue a request for the engine thread; raises ``UnknownModelError`` at once for a bad model."""
        handle = GenerationHandle(request, self.resolve_model(request.model), on_progress, should_cancel)
        self.start()
        self._pending.put(handle)
        return handle

    def run(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        return self.submit(request, on_progress, should_cancel).result()

    def run_exclusive(self, model: str | None, fn: Callable[[Any], T]) -> T:
        """Run ``fn(pipeline)`` on the engine thread with the device to itself (fine-tuning, tools)."""
        call = _Exclusive(lambda: fn(self.pipeline(model)))
        self.start()
        self._pending.put(call)
        return call.future.result()

    def warmup(self) -> float:
        """Compile and capture every batch bucket, then one tiny generation per model, so the first real job
        pays no first-call costs; sets ``ready``."""
        from model.compiled import warm_accelerated

        started = time.perf_counter()
        for name, fast in self._fast.items():
            self.run_exclusive(name, lambda pipe, fast=fast: warm_accelerated(pipe, fast))
        for name, pipe in self._pipelines.items():
            text = getattr(pipe, "condition_type", "class") == "text"
            condition: dict[str, Any] = {"prompt": "warm-up"} if text else {"class_label": 0}
            self.run(GenerationRequest(model=name, num_images=1, steps=2, seed=0, **condition))
        self.ready = True
        return time.perf_counter() - started

    @classmethod
    def load_and_warm(cls, settings: Settings) -> Engine:
        """``from_settings`` then ``warmup``; the total time goes to fae_model_warmup_seconds."""
        started = time.perf_counter()
        engine = cls.from_settings(settings)
        warmup_s = engine.warmup()
        total_s = time.perf_counter() - started
        metrics.MODEL_WARMUP_SECONDS.set(total_s)
        log.info(
            "engine ready",
            extra={
                "models": engine.models,
                "device": engine.device,
                "seconds": round(total_s, 3),
                "warmup_seconds": round(warmup_s, 3),
            },
        )
        return engine

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="fae-engine", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._pending.put(None)
            thread.join(timeout)
        self.ready = False

    def memory_stats(self) -> dict[str, int]:
        """Device memory in bytes (allocated, reserved, peak, total) when on CUDA; empty otherwise."""
        if not self.device.startswith("cuda"):
            return {}
        import torch

        return {
            "allocated": int(torch.cuda.memory_allocated(self.device)),
            "reserved": int(torch.cuda.memory_reserved(self.device)),
            "peak": int(torch.cuda.max_memory_allocated(self.device)),
            "total": int(torch.cuda.get_device_properties(self.device).total_memory),
        }

    def record_memory(self) -> None:
        for kind, value in self.memory_stats().items():
            metrics.GPU_MEMORY_BYTES.labels(device=self.device, kind=kind).set(value)

    # --- the engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        """Step-level batching: between denoising steps, admit what was submitted; then step every group.

        A group is the jobs that can share a generator call: same model, and (without adapter slots) same
        adapter. Groups take turns, one step each, so a long job never blocks a short one behind it.
        """
        groups: dict[tuple[str, str | None, float], _Group] = {}
        while True:
            block = not groups and not self._deferred
            while True:
                try:
                    item = self._pending.get(block=block)
                except queue.Empty:
                    break
                block = False
                if item is None:
                    self._fail_all(groups, RuntimeError("the engine was closed"))
                    for handle in self._deferred:
                        handle._future.set_exception(RuntimeError("the engine was closed"))
                    return
                if isinstance(item, _Exclusive):
                    if item.future.set_running_or_notify_cancel():
                        self._settle(item.future, item.fn)
                else:
                    self._admit(item, groups)
            for key, group in list(groups.items()):
                self._step_group(group)
                if group.engine.idle:
                    del groups[key]
            deferred, self._deferred = self._deferred, []
            for handle in deferred:  # slots may have been released by finished jobs
                self._admit_running(handle, groups)

    def _admit(self, handle: GenerationHandle, groups: dict[tuple[str, str | None, float], _Group]) -> None:
        if not handle._future.set_running_or_notify_cancel():
            return
        request = handle.request
        if self._hooks.crash_on_prompt and request.prompt == self._hooks.crash_on_prompt:
            # Test-only poison job: die the way an OOM kill does, with no chance to clean up.
            log.error("test crash hook matched the prompt: killing this process")
            os.kill(os.getpid(), signal.SIGKILL)
        self._admit_running(handle, groups)

    def _admit_running(
        self, handle: GenerationHandle, groups: dict[tuple[str, str | None, float], _Group]
    ) -> None:
        """Prepare a running job's samples (loading its adapter) and add them to its group's batch."""
        from model.engine import DenoisingEngine, EngineJob
        from model.lora_slots import NO_ADAPTER, AdapterSlotsFull

        if handle.cancel_requested():
            handle._future.set_exception(GenerationCanceled("canceled before generation started"))
            return
        request = handle.request
        pipe = self._pipelines[handle.model]
        slots = self._slots.get(handle.model)
        slot, adapter_id = NO_ADAPTER, None
        try:
            if slots is None:
                if self._would_evict_live_adapter(pipe, request.adapter, groups):
                    self._deferred.append(handle)  # retried once a running job frees its adapter
                    return
                adapter_id = self._load_adapter(pipe, request.adapter)
            elif request.adapter is not None:  # the slot selects the adapter per sample: no peft activation
                spec = request.adapter
                slot = slots.load(spec.local_dir, spec.adapter_id, spec.scale)
            samples = pipe.prepare_samples(
                request.prompt,
                request.class_label,
                request.num_images,
                request.steps,
                request.guidance_scale,
                request.guidance_schedule,
                request.seed,
                request.sampler,
                key=id(handle),
                adapter_slot=slot,
            )
        except AdapterSlotsFull as exc:
            if groups:  # running jobs hold every slot: try again after the next round of steps
                self._deferred.append(handle)
            else:
                handle._future.set_exception(exc)
            return
        except BaseException as exc:  # bad input: delivered to the waiter, the engine carries on
            if slots is not None:
                slots.release(slot)
            handle._future.set_exception(exc)
            return
        scale = request.adapter.scale if request.adapter and slots is None else 1.0
        group_key = (handle.model, adapter_id, scale)  # with slots: one group per model
        group = groups.get(group_key)
        if group is None:
            forward = self._fast.get(handle.model) if adapter_id is None else None
            engine = DenoisingEngine(
                pipe,
                forward=forward["generator"] if forward else None,
                max_batch_size=self.max_batch_size,
                decoders=(forward["feature_decoder"], forward["pixel_decoder"]) if forward else None,
            )
            group = groups[group_key] = _Group(handle.model, adapter_id, scale, engine)
        clock = _StepClock()
        group.handles[id(handle)] = (handle, clock)
        group.slots[id(handle)] = slot
        group.engine.add(EngineJob(id(handle), samples, on_step=partial(self._on_step, handle, clock)))

    def _on_step(self, handle: GenerationHandle, clock: _StepClock, step: int, total: int) -> bool:
        clock.tick()
        if self._hooks.step_delay_s:
            time.sleep(self._hooks.step_delay_s)
        if handle.on_progress is not None:
            handle.on_progress(min(step, total), total, clock.eta(step, total))
        return handle.cancel_requested()

    def _step_group(self, group: _Group) -> None:
        from model.pipeline import to_output

        pipe = self._pipelines[group.model]
        try:
            if group.model not in self._slots:
                self._activate_adapter(pipe, group)
            started = time.perf_counter()
            results = group.engine.step()
            metrics.DENOISE_STEP_SECONDS.observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.observe(group.engine.last_batch_size)
        except BaseException as exc:  # e.g. out of memory: every job in this batch fails, the engine lives on
            log.exception("denoising step failed", extra={"model": group.model})
            for key in list(group.handles):
                group.engine.cancel(key)
                handle, _ = group.handles.pop(key)
                self._release_slot(group, key)
                handle._future.set_exception(exc)
            return
        for result in results:
            handle, clock = group.handles.pop(result.key)
            self._release_slot(group, result.key)
            if result.canceled or result.images is None:
                step = clock.steps
                handle._future.set_exception(GenerationCanceled(f"generation canceled after step {step}"))
                continue
            handle._future.set_result(
                GenerationResult(
                    model=group.model,
                    images=list(to_output(result.images, "pil")),
                    seeds=[int(s) for s in result.seeds],
                    denoise_s=result.denoise_s,
                    decode_s=result.decode_s,
                    steps_run=clock.steps,
                )
            )

    def _release_slot(self, group: _Group, key: int) -> None:
        slot = group.slots.pop(key, 0)
        slots = self._slots.get(group.model)
        if slots is not None:
            slots.release(slot)

    def _activate_adapter(self, pipe: Any, group: _Group) -> None:
        """Make the group's adapter at the group's scale (or none) the active one before its step.

        Activating only sets flags and scales, so it is done every step: two groups may share an adapter at
        different scales, and it keeps live adapters most recently used in the manager's LRU.
        """
        from model.adapters import adapter_manager

        manager = adapter_manager(pipe)
        if group.adapter_id is not None:
            manager.activate(group.adapter_id, group.scale)
        elif manager.active is not None:
            pipe.unload_adapter()

    @staticmethod
    def _would_evict_live_adapter(pipe: Any, adapter: AdapterSpec | None, groups: dict) -> bool:
        """Without slots, loading one more adapter into a full cache would evict one a running group uses."""
        from model.adapters import adapter_manager

        if adapter is None or not groups:
            return False
        manager = adapter_manager(pipe)
        if adapter.adapter_id in manager.loaded:
            return False
        live = {g.adapter_id for g in groups.values() if g.adapter_id is not None}
        return len(live) >= manager.capacity

    @staticmethod
    def _fail_all(groups: dict, exc: BaseException) -> None:
        for group in groups.values():
            for handle, _ in group.handles.values():
                if not handle._future.done():
                    handle._future.set_exception(exc)

    @staticmethod
    def _settle(future: Future[Any], fn: Callable[[], Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # delivered to the waiter, which decides what it means
            future.set_exception(exc)

    @staticmethod
    def _load_adapter(pipe: Any, adapter: AdapterSpec | None) -> str | None:
        if adapter is None:
            return None
        return pipe.load_adapter(str(adapter.local_dir), adapter_id=adapter.adapter_id, scale=adapter.scale)


@dataclass
class _Group:
    """Jobs that share generator calls: one model, and without adapter slots one adapter at one scale."""

    model: str
    adapter_id: str | None
    scale: float
    engine: Any  # model.engine.DenoisingEngine (torch is imported only on the engine thread's side)
    handles: dict[int, tuple[GenerationHandle, _StepClock]] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)  # job -> the adapter slot its samples hold


@dataclass
class _Exclusive:
    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class _StepClock:
    """Times denoising steps from the pipeline's per-step callbacks."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.steps = 0

    def tick(self) -> float:
        now = time.perf_counter()
        step_s, self.last = now - self.last, now
        self.steps += 1
        return step_s

    def eta(self, step: int, total: int) -> float | None:
        if self.steps == 0 or step <= 0:
            return None
        per_step = (self.last - self.started) / self.steps
        return max(total - step, 0) * per_step
