"""The fine-tune job's plumbing: dataset in, training by ``model.training.lora.run_finetune``, adapter out.

The training itself belongs to the model stack. This module fetches the dataset from storage (the gateway's
upload under ``contract.dataset_key``, or the caller's ``s3_prefix``), runs the trainer on the engine thread
(it trains a copy of the generator, so the served model is untouched), uploads the adapter directory under
``contract.adapter_key`` and registers the adapter, so ``/v1/generate`` can use it at once.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from core.contract import AdapterRecord, FinetuneParams, Job, adapter_key, checkpoints_key, dataset_key
from worker.checkpoints import CheckpointMirror
from worker.jobs.common import JobContext, JobFailure, ProgressWriter, StopCheck, Throttled, progress_webhook
from worker.scratch import fetch_prefix, scratch_path

# What the trainer's report adds to the adapter record (the rest stays in the worker's log).
ADAPTER_REPORT_KEYS = (
    "base_fingerprint",
    "condition_type",
    "adapter_bytes",
    "final_loss",
    "total_duration_s",
)


def run_finetune(
    job: Job, ctx: JobContext, should_stop: StopCheck, timings: dict[str, float]
) -> dict[str, Any]:
    """Train an adapter for the job; the fields to record on the succeeded job (``timings``: none of its own)."""
    from model.training.lora import run_finetune as trainer  # torch-heavy: only when a fine-tune runs

    store, storage, engine, settings = ctx.store, ctx.storage, ctx.engine, ctx.settings
    known = {k: v for k, v in job.request.items() if k in FinetuneParams.model_fields}
    params = FinetuneParams.model_validate(known)
    adapter_id = job.id  # one fine-tune, one adapter: the id is stable across redeliveries
    prefix = params.s3_prefix or dataset_key(job.tenant, job.id)
    if not prefix.startswith(f"tenants/{job.tenant}/"):  # the gateway checks this too; never trust one side
        raise JobFailure("invalid_input", f"s3_prefix {prefix!r} is outside the tenant's part of the bucket")
    # A stable work directory, its checkpoints mirrored to storage: a redelivery to any host resumes from them.
    workdir = scratch_path(settings, "finetunes", job.id)
    try:
        dataset_dir = fetch_prefix(storage, prefix, settings, "finetunes", job.id, "dataset")
        files = [p for p in dataset_dir.rglob("*") if p.is_file()]
        if not files:
            raise JobFailure("invalid_input", f"the dataset at {prefix!r} is empty: upload images or a zip")
        source = files[0] if len(files) == 1 and files[0].suffix.lower() == ".zip" else dataset_dir
        output_dir = workdir / "adapter"
        progress = ProgressWriter(
            store, job.id, settings.worker.progress_interval_s, progress_webhook(job, ctx)
        )
        cancel = Throttled(should_stop, settings.worker.cancel_poll_s)
        mirror = CheckpointMirror(
            storage,
            checkpoints_key(job.tenant, job.id),
            workdir / "work" / "checkpoints",
            settings.storage.storage_retry_s,
        )
        mirror.restore()  # a redelivery, maybe to another host, resumes from the last mirrored checkpoint

        def progress_and_mirror(
            step: int, total: int, eta_s: float | None, loss: float | None = None
        ) -> None:
            progress(step, total, eta_s, loss)
            mirror.sync()

        def train(pipeline: Any) -> dict[str, Any]:
            return trainer(
                images_dir=source,
                out_dir=output_dir,
                pipeline=pipeline,
                steps=params.steps,
                rank=params.rank,
                learning_rate=params.learning_rate,
                trigger_phrase=params.trigger_phrase,
                progress_callback=progress_and_mirror,
                cancel_check=cancel,
                work_dir=workdir / "work",
            )

        report = engine.run_exclusive(job.model or params.model, train)
        adapter_prefix = adapter_key(job.tenant, adapter_id)
        storage.delete_prefix(adapter_prefix)  # a redelivered job replaces its own adapter, file for file
        for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
            storage.put_file(adapter_prefix + path.relative_to(output_dir).as_posix(), path)
        store.put_adapter(
            AdapterRecord.model_validate(
                {
                    "id": adapter_id,
                    "tenant": job.tenant,
                    # Adapters belong to a model name (any of its versions), not to an engine key.
                    "model": engine.resolve_model(job.model or params.model).partition("@")[0],
                    "name": params.name,
                    "key": adapter_prefix,
                    "job_id": job.id,
                    "rank": params.rank,
                    "steps": params.steps,
                    "trigger_phrase": params.trigger_phrase,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **{k: report[k] for k in ADAPTER_REPORT_KEYS if k in report},
                }
            )
        )
        mirror.clear()
        if settings.storage.delete_dataset_after_training and not params.s3_prefix:
            storage.delete_prefix(prefix)  # the upload served its purpose (a caller's own s3_prefix stays)
        return {"adapter_id": adapter_id}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
