"""`FAEClient` (sync) and `AsyncFAEClient`: one set of resources over `_core.Core`, run by a sync or an async
driver. With the sync client every method returns its result; with the async client the same method returns an
awaitable of it (`jobs.stream` an iterator or an async iterator of events).

    from fae_client import FAEClient

    with FAEClient() as fae:  # FAE_BASE_URL, FAE_API_KEY
        job = fae.generate(prompt="red apple", wait=True)
        png = fae.images(job)[0]
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from fae_client._core import Config, Core, _path
from fae_client._flow import AsyncDriver, Flow, SyncDriver
from fae_client._uploads import Dataset, ImageInput, ProgressHook
from fae_client.types import (
    Adapter,
    DeadLetter,
    EmbeddingList,
    Job,
    JobPage,
    Model,
    ProvenanceVerification,
)
from fae_client.webhooks import verify_webhook

T = TypeVar("T")
# Sync client: T. Async client: an awaitable of T.
Result = T | Awaitable[T]


class _Resource:
    def __init__(
        self, core: Core, run: Callable[[Flow[Any]], Any], iterate: Callable[[Flow[Any]], Any]
    ) -> None:
        self._core, self._run, self._iterate = core, run, iterate


class Jobs(_Resource):
    """Jobs of either kind (`/v1/jobs`)."""

    def get(self, job_id: str) -> Result[Job]:
        return self._run(self._core.get_job(job_id))

    def list(
        self, *, limit: int | None = None, cursor: str | None = None, kind: str | None = None
    ) -> Result[JobPage]:
        """One page, newest first; pass `page.next_cursor` as `cursor` for the next."""
        return self._run(self._core.list_jobs("/v1/jobs", limit, cursor, kind))

    def cancel(self, job_id: str) -> Result[Job]:
        """Queued: canceled at once; running: stops at its next step (the answer says `cancel_requested`)."""
        return self._run(self._core.cancel_job(_path("v1", "jobs", job_id, "cancel")))

    def delete(self, job_id: str) -> Result[None]:
        """A finished job's images, dataset and record (ConflictError while it runs)."""
        return self._run(self._core.delete(_path("v1", "jobs", job_id)))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Result[Job]:
        """The job once it is done (succeeded, failed or canceled); `JobWaitTimeout` after `timeout` s."""
        return self._run(self._core.wait(job_id, timeout, poll_interval))

    def stream(self, job_id: str, *, last_event_id: str | None = None, max_reconnects: int = 5) -> Any:
        """`JobEvent`s (`status` with the job, `progress` with step/total/eta) until the job is done; reconnects
        with `Last-Event-ID`. Sync: an iterator; async: an async iterator."""
        return self._iterate(self._core.stream(job_id, last_event_id, max_reconnects))


class Finetunes(_Resource):
    """LoRA fine-tunes (`/v1/finetunes`)."""

    def create(
        self,
        files: Dataset,
        *,
        model: str | None = None,
        name: str | None = None,
        steps: int | None = None,
        rank: int | None = None,
        learning_rate: float | None = None,
        trigger_phrase: str | None = None,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: ProgressHook | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Result[Job]:
        """Upload a dataset and start training. `files`: a directory, a zip or image path, or a list of paths
        or (filename, bytes) pairs. `progress(sent, total)` is called as the upload goes out. An
        `Idempotency-Key` is sent (generated unless given) and reused by every retry of this call."""
        params = {
            "model": model,
            "name": name,
            "steps": steps,
            "rank": rank,
            "learning_rate": learning_rate,
            "trigger_phrase": trigger_phrase,
            "webhook_url": webhook_url,
            "metadata": metadata,
            **extra,
        }
        return self._run(self._core.create_finetune(files, params, progress, idempotency_key))

    def get(self, job_id: str) -> Result[Job]:
        return self._run(self._core.get_finetune(job_id))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> Result[JobPage]:
        return self._run(self._core.list_jobs("/v1/finetunes", limit, cursor))

    def cancel(self, job_id: str) -> Result[Job]:
        return self._run(self._core.cancel_job(_path("v1", "finetunes", job_id, "cancel")))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Result[Job]:
        return self._run(self._core.wait(job_id, timeout, poll_interval))


class Adapters(_Resource):
    """Fine-tuned adapters (`/v1/adapters`)."""

    def list(self) -> Result[builtins.list[Adapter]]:
        return self._run(self._core.list_adapters())

    def get(self, adapter_id: str) -> Result[Adapter]:
        return self._run(self._core.get_adapter(adapter_id))

    def delete(self, adapter_id: str) -> Result[None]:
        """The adapter, its weights and the dataset that trained it."""
        return self._run(self._core.delete(_path("v1", "adapters", adapter_id)))

    def download(self, adapter_id: str) -> Result[bytes]:
        """A zip in peft's format (`adapter_config.json`, `adapter_model.safetensors`)."""
        return self._run(self._core.download_adapter(adapter_id))


class Models(_Resource):
    def list(self) -> Result[builtins.list[Model]]:
        return self._run(self._core.list_models())


class Webhooks(_Resource):
    verify = staticmethod(verify_webhook)

    def secret(self) -> Result[str]:
        """The tenant's signing secret (`whsec_...`), for `verify`."""
        return self._run(self._core.webhook_secret())

    def rotate(self) -> Result[str]:
        """A new signing secret; the previous one still signs beside it for the server's overlap period."""
        return self._run(self._core.webhook_secret(rotate=True))


class Provenance(_Resource):
    """Content Credentials and the invisible watermark (`/v1/provenance`)."""

    def verify(self, image: str | os.PathLike[str] | bytes) -> Result[ProvenanceVerification]:
        """Whether an image (a path or its bytes) carries this service's valid credentials (`credentials.status`:
        `valid`, `tampered`, `unknown_signer`, `none`) and which of your jobs made it (`job_id`, also from the
        watermark when the credentials were stripped)."""
        return self._run(self._core.verify_provenance(image))


class Embeddings(_Resource):
    """Image embeddings (`POST /v1/embeddings`), answered synchronously."""

    def create(
        self, images: Sequence[ImageInput], *, kind: str | None = None, model: str | None = None
    ) -> Result[EmbeddingList]:
        """Vectors of images (paths or bytes, uploaded; or data URIs / storage keys): `kind` `latent` (default:
        the FAE latent pooled), `latent_tokens` (one per latent grid cell) or `encoder` (the frozen encoder's
        pooled features). README: Embeddings says which suits what."""
        return self._run(self._core.embeddings(list(images), kind, model))


class Admin(_Resource):
    """Operator endpoints (admin scope)."""

    def dead_letters(self) -> Result[list[DeadLetter]]:
        return self._run(self._core.list_dead_letters())

    def replay(self, job_id: str) -> Result[Job]:
        return self._run(self._core.replay_dead_letter(job_id))


class _Client(_Resource):
    def __init__(
        self, core: Core, run: Callable[[Flow[Any]], Any], iterate: Callable[[Flow[Any]], Any]
    ) -> None:
        super().__init__(core, run, iterate)
        self.jobs = Jobs(core, run, iterate)
        self.finetunes = Finetunes(core, run, iterate)
        self.adapters = Adapters(core, run, iterate)
        self.models = Models(core, run, iterate)
        self.webhooks = Webhooks(core, run, iterate)
        self.admin = Admin(core, run, iterate)
        self.provenance = Provenance(core, run, iterate)
        self.embeddings = Embeddings(core, run, iterate)

    @property
    def base_url(self) -> str:
        return self._core.config.base_url

    def generate(
        self,
        prompt: str | None = None,
        *,
        class_label: int | None = None,
        model: str | None = None,
        n: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        adapter: str | None = None,
        adapter_scale: float | None = None,
        output_format: str | None = None,
        response_format: str | None = None,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        image: ImageInput | None = None,
        strength: float | None = None,
        wait: bool | float = False,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Result[Job]:
        """Submit a generation. `wait=False`: the queued job at once; `wait=N`: held up to N seconds (the
        job as it is then); `wait=True`: until it is done. Unset fields take the server's defaults; other
        request fields (`sampler`, `guidance_schedule`, ...) pass through `extra`. An `Idempotency-Key` is
        sent (generated unless given) and reused by every retry of this call.

        `image` (image-to-image): a path or bytes (uploaded as multipart) or a data URI / storage key under
        your tenant's prefix; `strength` in [0, 1] (server default 0.6; 1 = plain generation, 0 = its
        reconstruction)."""
        body = {
            "prompt": prompt,
            "class_label": class_label,
            "model": model,
            "n": n,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "negative_prompt": negative_prompt,
            "adapter": adapter,
            "adapter_scale": adapter_scale,
            "output_format": output_format,
            "response_format": response_format,
            "webhook_url": webhook_url,
            "metadata": metadata,
            "image": image,
            "strength": strength,
            **extra,
        }
        return self._run(self._core.generate(body, wait, idempotency_key))

    def images(self, job: Job) -> Result[list[bytes]]:
        """A succeeded job's images as bytes (`JobFailedError` otherwise)."""
        return self._run(self._core.images(job))

    def download(self, url: str) -> Result[bytes]:
        return self._run(self._core.download(url))


def _config(
    base_url: str | None, api_key: str | None, timeout: float, max_retries: int, max_retry_delay: float
) -> Core:
    return Core(Config.resolve(base_url, api_key, timeout, max_retries, max_retry_delay))


class FAEClient(_Client):
    """The synchronous client. `base_url` and `api_key` default to `FAE_BASE_URL` and `FAE_API_KEY`.
    429 and 503 answers and connection errors are retried `max_retries` times (after `Retry-After`, or with
    exponential backoff); a Retry-After over `max_retry_delay` seconds raises at once."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_delay: float = 60.0,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        driver = SyncDriver(self._http, sleep)
        super().__init__(
            _config(base_url, api_key, timeout, max_retries, max_retry_delay), driver.run, driver.iterate
        )

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> FAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFAEClient(_Client):
    """The asyncio client: the same methods as `FAEClient`, awaited (`async for` over `jobs.stream`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_delay: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        driver = AsyncDriver(self._http, sleep)
        super().__init__(
            _config(base_url, api_key, timeout, max_retries, max_retry_delay), driver.run, driver.iterate
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncFAEClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def save_images(images: list[bytes], out: str | os.PathLike[str]) -> list[Path]:
    """Write images to `out` (one image) or `out` with `-1`, `-2`, ... before the suffix (several)."""
    target = Path(out)
    paths = (
        [target] if len(images) == 1 else [target.with_stem(f"{target.stem}-{i}") for i in range(len(images))]
    )
    for path, data in zip(paths, images, strict=True):
        write_file(path, data)
    return paths


def write_file(path: Path, data: bytes) -> None:
    """Write under a temporary name, then move into place: never a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(data)
    temporary.replace(path)
