"""Jobs by kind: ``execute_job`` runs one delivery of a job with the handler its ``JobKind`` names.

``common`` holds the delivery lifecycle every kind shares (lease, heartbeat, delivery count, terminal
state); ``generate``, ``finetune`` and ``embed`` are the kinds' handlers; ``webhook`` delivers a terminal job's webhook.
The Celery tasks (``worker.celery_app``) and the embedded runner (``worker.embedded_queue``) both come here.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.contract import Job, JobKind
from worker.jobs.common import JobContext, JobHandler, deliver
from worker.jobs.embed import run_embed
from worker.jobs.finetune import run_finetune
from worker.jobs.generate import run_generate

HANDLERS: Mapping[JobKind, JobHandler] = {
    JobKind.generate: run_generate,
    JobKind.finetune: run_finetune,
    JobKind.embed: run_embed,
}


def execute_job(job_id: str, ctx: JobContext) -> Job | None:
    """Run one delivery of a job; the job if this delivery made it terminal, else None (see ``common``)."""
    return deliver(job_id, ctx, HANDLERS)
