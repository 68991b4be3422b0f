"""The generate job: resolve its adapter, run the engine, encode and upload the images."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from core import metrics
from core.contract import GenerateRequest, Job, ProvenanceRecord
from core.jobstore import JobStore
from core.settings import Settings, WorkerSettings
from core.storage import Storage
from model.errors import InvalidInputError
from worker.engine import AdapterSpec, GenerationRequest, GenerationResult
from worker.inputs import load_input_image
from worker.jobs.common import JobContext, ProgressWriter, StopCheck, Throttled, progress_webhook
from worker.outputs import encode_image, upload_images
from worker.provenance import ImageProvenance, mark_images, provenance_for, sign_outputs
from worker.scratch import fetch_prefix


def run_generate(
    job: Job, ctx: JobContext, should_stop: StopCheck, timings: dict[str, float]
) -> dict[str, Any]:
    """Generate, encode and upload a job's images (stage seconds into ``timings``); the job's new fields."""
    store, storage, engine, worker = ctx.store, ctx.storage, ctx.engine, ctx.settings.worker
    request = GenerateRequest.model_validate(job.request)
    adapter = resolve_adapter(job, request, store, storage, ctx.settings)
    image = None
    if request.image is not None:  # image-to-image: the input the gateway stored under the job's prefix
        image = load_input_image(storage, job.tenant, request.image, ctx.settings)
    generation = GenerationRequest.from_api(request, adapter, tenant=job.tenant, image=image)
    if job.model:  # the gateway resolved the model name when it accepted the job
        generation = dataclasses.replace(generation, model=job.model)
    if image is not None and generation.strength == 0.0:
        result = reconstruct(ctx, generation)
    else:
        # Progress writes and cancel polls run here, on the job's own thread, while the engine thread batches
        # this job's steps with every other job the worker holds.
        result = engine.submit(generation).wait(
            on_progress=ProgressWriter(store, job.id, worker.progress_interval_s, progress_webhook(job, ctx)),
            should_cancel=Throttled(should_stop, worker.cancel_poll_s),
            poll_s=poll_interval(worker),
        )
    started = time.perf_counter()
    encoded, applied = mark_and_sign(job, request, ctx, result.images, result.seeds, result.model, adapter)
    provenance_s, started = time.perf_counter() - started, time.perf_counter()
    outputs = upload_images(
        storage,
        job.tenant,
        job.id,
        encoded,
        result.seeds,
        request.output_format,
        ctx.settings.storage.storage_retry_s,
    )
    stages = {
        "denoise": result.denoise_s,
        "decode": result.decode_s,
        "provenance": provenance_s,
        "upload": time.perf_counter() - started,
    }
    for stage, seconds in stages.items():
        metrics.JOB_DURATION.labels(kind=job.kind.value, stage=stage).observe(seconds)
        timings[stage] = round(seconds, 4)
    metrics.IMAGES_GENERATED.labels(model=result.model).inc(len(outputs))
    engine.record_memory()
    # `model` stays as admitted (a name, or its `name@version` pin); the version it ran on is in model_version.
    model = job.model or result.model
    return {"outputs": outputs, "seeds": result.seeds, "model": model, "provenance": applied}


def reconstruct(ctx: JobContext, generation: GenerationRequest) -> GenerationResult:
    """Strength 0: the input encoded and decoded only (on the engine thread, between denoising steps)."""
    from model.pipeline import to_output

    started = time.perf_counter()
    model = ctx.engine.resolve_model(generation.model)
    images = ctx.engine.run_exclusive(
        model, lambda pipe: to_output(pipe.reconstruct([generation.image]), "pil")
    )
    seconds = time.perf_counter() - started
    return GenerationResult(model, images, [generation.seed or 0], 0.0, seconds, 0)


def mark_and_sign(
    job: Job,
    request: GenerateRequest,
    ctx: JobContext,
    images: list[Any],
    seeds: list[int],
    model: str,
    adapter: AdapterSpec | None,
) -> tuple[list[tuple[bytes, str]], ProvenanceRecord]:
    """Watermark, encode and sign the images (worker/provenance.py); what was applied."""
    provenance = provenance_for(ctx.settings.provenance)
    inputs = ImageProvenance(
        job, request, model, request.adapter, adapter.local_dir if adapter is not None else None
    )
    images, watermarked = mark_images(provenance, ctx.store, inputs, images)
    encoded = [encode_image(image, request.output_format) for image in images]
    encoded, signed = sign_outputs(provenance, inputs, encoded, seeds, watermarked)
    return encoded, ProvenanceRecord(c2pa=signed, watermark=watermarked)


def poll_interval(worker: WorkerSettings) -> float:
    """How often a waiting job looks at its progress and cancel flag: the finer of the two settings."""
    return max(min(worker.progress_interval_s, worker.cancel_poll_s), 0.01)


def resolve_adapter(
    job: Job, request: GenerateRequest, store: JobStore, storage: Storage, settings: Settings
) -> AdapterSpec | None:
    """The job's adapter, downloaded once into the worker's scratch directory."""
    if request.adapter is None:
        return None
    record = store.get_adapter(job.tenant, request.adapter)
    if record is None:
        raise InvalidInputError(f"adapter {request.adapter!r} does not exist (see GET /v1/adapters)")
    local_dir = fetch_prefix(storage, record.key, settings, "adapters", job.tenant, request.adapter)
    return AdapterSpec(adapter_id=request.adapter, local_dir=local_dir, scale=request.adapter_scale)
