"""The embed job: vectors of the input images the gateway stored, computed on the engine's device thread and
written as JSON under the job's prefix, where `POST /v1/embeddings` reads them back."""

from __future__ import annotations

import json
import time
from typing import Any

from core.contract import EmbedRequest, Job, embeddings_key
from core.storage import retry_storage
from worker.inputs import load_input_image
from worker.jobs.common import JobContext, StopCheck


def run_embed(job: Job, ctx: JobContext, should_stop: StopCheck, timings: dict[str, float]) -> dict[str, Any]:
    request = EmbedRequest.model_validate(job.request)
    settings = ctx.settings
    images = [load_input_image(ctx.storage, job.tenant, key, settings) for key in request.images]
    model = ctx.engine.resolve_model(job.model or request.model)
    started = time.perf_counter()
    vectors = ctx.engine.run_exclusive(model, lambda pipe: pipe.embed(images, request.kind).cpu().tolist())
    timings["embed"] = round(time.perf_counter() - started, 4)
    body = json.dumps({"kind": request.kind, "embeddings": vectors}, separators=(",", ":")).encode()
    key = embeddings_key(job.tenant, job.id)
    retry_storage(
        lambda: ctx.storage.put_bytes(key, body, "application/json"), settings.storage.storage_retry_s
    )
    return {"model": job.model or model}
