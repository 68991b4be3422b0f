"""The engine loop: one thread owns the device and runs every submitted request on it.

Callers ``submit`` a :class:`GenerationRequest` and get a :class:`GenerationHandle` back. Between denoising
steps the thread admits what was submitted into groups (jobs that can share a generator call) and steps each
group once, through the model stack's ``DenoisingBatcher``; ``run_exclusive`` gives a function
(fine-tuning, warm-up) the device to itself. Without adapter slots, a job whose adapter would evict one that a
running group uses waits until that group finishes. Building an engine from settings is ``loading``'s job.
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
from typing import Any, TypeVar

from core import metrics
from core.manifests import resolve_reference
from model.errors import GenerationCanceled
from worker.engine.interface import (
    AdapterSpec,
    CancelCheck,
    EngineHooks,
    GenerationHandle,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    UnknownModelError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        attaches that many LoRA slots to every generator (model/adapters/slots.py): jobs with different adapters
        then share one batch; 0 keeps peft (one active adapter, one group per adapter)."""
        if not pipelines:
            raise ValueError("an engine needs at least one pipeline")
        self._pipelines = dict(pipelines)
        # key -> (name, version, fingerprint) of each loaded model; `load_engine` fills it from the catalog.
        self.identities: dict[str, tuple[str, str | None, str | None]] = {
            key: (key.partition("@")[0], None, None) for key in self._pipelines
        }
        self.default_model = default_model or next(iter(self._pipelines))
        if self.default_model not in self._pipelines:
            raise ValueError(f"default model {self.default_model!r} is not among {sorted(self._pipelines)}")
        self.device = device
        self._hooks = hooks or EngineHooks()
        self.max_batch_size = max_batch_size
        self._fast: dict[str, Mapping[str, Any]] = dict(accelerated or {})
        self._pending: queue.Queue[GenerationHandle | _Exclusive | None] = queue.Queue()
        self._slots: dict[str, Any] = {}  # model -> model.adapters.AdapterSlots
        if adapter_slots > 0:
            from model.adapters import AdapterSlots
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

    # --- public API ----------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return list(self._pipelines)

    @property
    def accelerated(self) -> Mapping[str, Mapping[str, Any]]:
        """Per model, its compiled forwards (warm-up compiles and captures them before the first job)."""
        return self._fast

    def pipeline(self, model: str | None = None) -> Any:
        return self._pipelines[self.resolve_model(model)]

    def resolve_model(self, model: str | None) -> str:
        """The key of the pipeline `model` names: a key, or `name@version` / `name@<fingerprint>`."""
        name = model or self.default_model
        if name not in self._pipelines and "@" in name:
            rows = [(key, *identity) for key, identity in self.identities.items()]
            name = resolve_reference(name, rows) or name
        if name not in self._pipelines:
            raise UnknownModelError(f"unknown model {name!r}; this worker serves {sorted(self._pipelines)}")
        return name

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a request for the engine thread; raises ``UnknownModelError`` at once for a bad model."""
        handle = GenerationHandle(request, self.resolve_model(request.model))
        self.start()
        self._pending.put(handle)
        return handle

    def run(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        poll_s: float = 0.05,
    ) -> GenerationResult:
        """Submit and wait; the callbacks run on this (the calling) thread, see ``GenerationHandle.wait``."""
        return self.submit(request).wait(on_progress, should_cancel, poll_s)

    def run_exclusive(self, model: str | None, fn: Callable[[Any], T]) -> T:
        """Run ``fn(pipeline)`` on the engine thread with the device to itself (fine-tuning, tools)."""
        call = _Exclusive(lambda: fn(self.pipeline(model)))
        self.start()
        self._pending.put(call)
        return call.future.result()

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
            arrivals: list[GenerationHandle] = []
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
                    arrivals.append(item)
            self._admit(arrivals, groups)
            for key, group in list(groups.items()):
                self._drop_canceled(group)
                self._step_group(group)
                if group.engine.idle:
                    del groups[key]
            deferred, self._deferred = self._deferred, []
            for handle in deferred:  # slots may have been released by finished jobs
                self._admit_running(handle, groups)

    def _admit(
        self, arrivals: list[GenerationHandle], groups: dict[tuple[str, str | None, float], _Group]
    ) -> None:
        """Admit the requests submitted since the last round, their prompts encoded in one call per model."""
        running = [h for h in arrivals if h._future.set_running_or_notify_cancel()]
        for handle in running:
            prompt = handle.request.prompt
            if self._hooks.crash_on_prompt and prompt == self._hooks.crash_on_prompt:
                # Test-only poison job: die the way an OOM kill does, with no chance to clean up.
                log.error("test crash hook matched the prompt: killing this process")
                os.kill(os.getpid(), signal.SIGKILL)
        encoded, negatives = self._encode_prompts(running)
        for handle in running:
            self._admit_running(handle, groups, encoded.get(id(handle)), negatives.get(id(handle)))

    def _encode_prompts(self, handles: list[GenerationHandle]) -> tuple[dict[int, Any], dict[int, Any]]:
        """One text-encoder call per text model for every prompt admitted together (each repeated ``n``
        times) and their negative prompts (once each): handle id → its prompt rows, handle id → its negative
        prompt's row. A handle left out encodes its own (and reports its own error)."""
        import torch

        from model.pipeline import MAX_IMAGES_PER_CALL

        by_model: dict[str, list[GenerationHandle]] = {}
        for handle in handles:
            request = handle.request
            text = getattr(self._pipelines[handle.model], "condition_type", "class") == "text"
            if text and isinstance(request.prompt, str) and 1 <= request.n <= MAX_IMAGES_PER_CALL:
                by_model.setdefault(handle.model, []).append(handle)
        encoded: dict[int, Any] = {}
        negatives: dict[int, Any] = {}
        for model, batch in by_model.items():
            if len(batch) < 2:
                continue  # nothing to share
            prompts = [h.request.prompt for h in batch for _ in range(h.request.n)]
            negative = [h for h in batch if isinstance(h.request.negative_prompt, str)]
            prompts += [h.request.negative_prompt for h in negative]
            try:
                with torch.inference_mode():
                    rows = self._pipelines[model].encode_text(prompts)
            except Exception:  # each request then encodes (and fails) on its own
                log.warning("batched prompt encoding failed", extra={"model": model}, exc_info=True)
                continue
            start = 0
            for handle in batch:
                end = start + handle.request.n
                encoded[id(handle)] = {k: v[start:end] for k, v in rows.items()}
                start = end
            for handle in negative:
                negatives[id(handle)] = {k: v[start : start + 1] for k, v in rows.items()}
                start += 1
        return encoded, negatives

    def _admit_running(
        self,
        handle: GenerationHandle,
        groups: dict[tuple[str, str | None, float], _Group],
        encoded: Any = None,
        encoded_negative: Any = None,
    ) -> None:
        """Prepare a running job's samples (loading its adapter) and add them to its group's batch;
        ``encoded`` / ``encoded_negative``: its prompt rows and its negative prompt's row when
        ``_encode_prompts`` encoded them with others'."""
        import torch

        from model.adapters import NO_ADAPTER, AdapterSlotsFull
        from model.batching import DenoisingBatcher, DenoisingJob

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
            with torch.inference_mode():  # serving's mode, which warm-up compiled for (see _step_group)
                samples = _prepare_samples(pipe, request, id(handle), slot, encoded, encoded_negative)
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
            engine = DenoisingBatcher(
                pipe,
                forward=forward["generator"] if forward else None,
                max_batch_size=self.max_batch_size,
                decoders=(forward["feature_decoder"], forward["pixel_decoder"]) if forward else None,
            )
            group = groups[group_key] = _Group(handle.model, adapter_id, scale, engine)
        clock = _StepClock()
        group.handles[id(handle)] = (handle, clock)
        group.slots[id(handle)] = slot
        group.engine.add(
            DenoisingJob(
                id(handle), samples, on_step=partial(self._on_step, handle, clock), owner=request.tenant
            )
        )

    def _on_step(self, handle: GenerationHandle, clock: _StepClock, step: int, total: int) -> bool:
        """After each step: in-memory progress and the cancel flag only (no I/O on the device thread)."""
        clock.tick()
        if self._hooks.step_delay_s:
            time.sleep(self._hooks.step_delay_s)
        handle._progress = (min(step, total), total, clock.eta(step, total))
        return handle.cancel_requested()

    def _drop_canceled(self, group: _Group) -> None:
        """Jobs canceled while they wait for room in the batch leave now, not once admitted (running ones
        leave at their next step through ``_on_step``)."""
        for key, (handle, clock) in list(group.handles.items()):
            if handle.cancel_requested() and group.engine.is_pending(key):
                group.engine.cancel(key)
                group.handles.pop(key)
                self._release_slot(group, key)
                handle._future.set_exception(
                    GenerationCanceled(f"generation canceled after step {clock.steps}")
                )

    def _step_group(self, group: _Group) -> None:
        import torch

        from model.pipeline import to_output

        pipe = self._pipelines[group.model]
        try:
            if group.model not in self._slots:
                self._activate_adapter(pipe, group)
            started = time.perf_counter()
            # The mode warm-up compiled in (model/compiled.py warm_accelerated): dynamo guards on grad mode.
            with torch.inference_mode():
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


def _prepare_samples(
    pipe: Any,
    request: GenerationRequest,
    key: int,
    adapter_slot: int,
    encoded: Any = None,
    encoded_negative: Any = None,
) -> list[Any]:
    """The one translation from the job contract's names to the pipeline's (diffusers') names."""
    return pipe.prepare_samples(
        prompt=request.prompt,
        class_labels=request.class_label,
        num_images=request.n,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        guidance_schedule=request.guidance_schedule,
        guidance_intervals=request.guidance_intervals,
        seed=request.seed,
        sampler=request.sampler,
        key=key,
        adapter_slot=adapter_slot,
        encoded=encoded,
        negative_prompt=request.negative_prompt,
        encoded_negative=encoded_negative,
        image=request.image,
        strength=request.strength,
    )


@dataclass
class _Group:
    """Jobs that share generator calls: one model, and without adapter slots one adapter at one scale."""

    model: str
    adapter_id: str | None
    scale: float
    engine: Any  # the model stack's DenoisingBatcher (torch is imported only on the engine thread's side)
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
