"""Which model version a job runs on, and the refusal to run a pinned job on any other.

A job whose `model` is `name@version` (or `name@<fingerprint>`) runs only on that version. A worker that does
not hold it (mid-rollout: an old pod meets a job for the new version, or a new pod one for a version it
dropped) raises `ModelVersionUnavailable` before it leases or counts the delivery, so the task is sent again
with backoff (worker/celery_app.py) for a worker that holds the version: the job stays queued, never runs on
another version and is never dead-lettered for it. Every job records the version and fingerprint it ran on.
"""

from __future__ import annotations

from typing import Any

from core import metrics
from core.contract import Job
from worker.engine import Engine, UnknownModelError


class ModelVersionUnavailable(RuntimeError):
    """This worker does not hold the model version a job is pinned to: send the job to another worker."""


def running_model_fields(job: Job, engine: Engine) -> dict[str, Any]:
    """`model_version` and `model_fingerprint` of the model this worker runs the job on; raises
    ModelVersionUnavailable for a pinned job whose version it does not hold. A plain unknown name is left to
    the job's handler, which fails the job with `invalid_input` as before."""
    try:
        key = engine.resolve_model(job.model)
    except UnknownModelError:
        if job.model is not None and "@" in job.model:
            metrics.MODEL_VERSION_UNAVAILABLE.labels(model=job.model.partition("@")[0]).inc()
            held = ", ".join(sorted(engine.models))
            raise ModelVersionUnavailable(
                f"job {job.id} is pinned to {job.model!r}, which this worker does not hold ({held}): "
                "it stays queued for a worker that does"
            ) from None
        return {}
    _, version, fingerprint = engine.identities.get(key, (key, None, None))
    return {"model_version": version, "model_fingerprint": fingerprint}
