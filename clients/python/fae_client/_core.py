"""Every API operation once, as a flow (see `_flow`): request building, retries, response parsing, polling and
event streams. The sync and async clients only choose the driver that runs these."""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from fae_client._flow import Close, Emit, Flow, Read, ReadLine, Send, Sleep
from fae_client._sse import SSEParser
from fae_client._uploads import (
    Dataset,
    ImageInput,
    ProgressHook,
    close_dataset,
    form_fields,
    image_upload,
    open_dataset,
    with_progress,
)
from fae_client.errors import APIConnectionError, JobFailedError, JobWaitTimeout, error_from_response
from fae_client.types import (
    Adapter,
    DeadLetter,
    EmbeddingList,
    Job,
    JobEvent,
    JobPage,
    Model,
    Progress,
    ProvenanceVerification,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Answers that mean "nothing was done, try again later": a retry is safe for every operation.
RETRY_STATUSES = frozenset({429, 503})
# The longest `Prefer: wait` one request asks for (the server caps it too, at FAE_MAX_WAIT_S).
MAX_PREFER_WAIT_S = 60.0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fae-client")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class Config:
    base_url: str
    api_key: str | None
    timeout: float
    max_retries: int
    max_retry_delay: float  # a Retry-After longer than this is not waited for: the error is raised
    backoff_base: float = 0.5
    backoff_cap: float = 8.0

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        max_retry_delay: float,
    ) -> Config:
        """Arguments first, then the `FAE_BASE_URL` / `FAE_API_KEY` environment variables."""
        url = base_url or os.environ.get("FAE_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or os.environ.get("FAE_API_KEY") or None
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        return cls(url.rstrip("/"), key, timeout, max_retries, max_retry_delay)


def _path(*segments: str) -> str:
    return "/".join(quote(segment, safe="") for segment in segments)


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class Core:
    """The operations of the API, as flows."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.user_agent = f"fae-client/{_version()} httpx/{httpx.__version__}"

    # --- requests and retries ----------------------------------------------------------------------
    def build(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        files: list[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticate: bool = True,
        extra_timeout: float = 0.0,
    ) -> httpx.Request:
        # API paths are relative to base_url, which may carry a path prefix (a gateway behind an ingress at
        # `/fae/`); an absolute URL (a download) stays as is.
        url = httpx.URL(self.config.base_url.rstrip("/") + "/").join(path.lstrip("/"))
        merged = {"User-Agent": self.user_agent, **(headers or {})}
        if authenticate and self.config.api_key:
            merged["Authorization"] = f"Bearer {self.config.api_key}"
        timeout = httpx.Timeout(self.config.timeout, read=self.config.timeout + extra_timeout)
        return httpx.Request(
            method,
            url,
            params=_without_none(params) if params else None,  # (an empty dict would drop the URL's query)
            json=json_body,
            data=data,
            files=files,
            headers=merged,
            extensions={"timeout": timeout.as_dict()},
        )

    def backoff(self, attempt: int) -> float:
        """Exponential, with jitter, for retries without a Retry-After."""
        delay = min(self.config.backoff_cap, self.config.backoff_base * 2**attempt)
        return delay * random.uniform(0.75, 1.25)

    def send(
        self,
        build: Callable[[], httpx.Request],
        *,
        stream: bool = False,
        retry_connection_errors: bool = True,
    ) -> Flow[httpx.Response]:
        """Send `build()` (a fresh request each attempt), retrying 429/503 (after Retry-After) and, when the
        operation is safe to repeat, connection errors; an error answer raises its typed exception."""
        attempt = 0
        while True:
            request: httpx.Request = build()
            try:
                response: httpx.Response = yield Send(request, stream)
            except httpx.TransportError as exc:
                if not retry_connection_errors or attempt >= self.config.max_retries:
                    raise APIConnectionError(
                        f"{request.method} {request.url}: {type(exc).__name__}: {exc}"
                    ) from exc
                yield Sleep(self.backoff(attempt))
                attempt += 1
                continue
            if response.is_success or response.is_redirect:
                return response
            if stream:
                yield Read(response)
            error = error_from_response(response)
            if stream:
                yield Close(response)
            delay = error.retry_after if error.retry_after is not None else self.backoff(attempt)
            retry = response.status_code in RETRY_STATUSES and attempt < self.config.max_retries
            if not retry or delay > self.config.max_retry_delay:
                raise error
            yield Sleep(delay)
            attempt += 1

    def call(self, method: str, path: str, **options: Any) -> Flow[httpx.Response]:
        send_options = {k: options.pop(k) for k in ("stream", "retry_connection_errors") if k in options}
        return self.send(lambda: self.build(method, path, **options), **send_options)

    # --- generate and jobs -------------------------------------------------------------------------
    def generate(self, body: dict[str, Any], wait: bool | float, idempotency_key: str | None) -> Flow[Job]:
        """`POST /v1/generate`; with `wait`, held up to that many seconds (True: until done), then polled."""
        started = time.monotonic()
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}  # one key for every retry
        limit = None if wait is True else float(wait or 0)
        prefer = MAX_PREFER_WAIT_S if limit is None else min(limit, MAX_PREFER_WAIT_S)
        if wait is not False and prefer > 0:
            headers["Prefer"] = f"wait={prefer:g}"
        image = body.pop("image", None)
        upload = image_upload(image)
        if upload is None:  # JSON, with `image` a data URI or a storage key if given
            body = {**body, "image": image}
            options: dict[str, Any] = {"json_body": _without_none(body)}
        else:  # multipart: the image as the file part `image`, the other fields as form fields
            options = {"data": form_fields(body), "files": [("image", upload)]}
        response = yield from self.call(
            "POST",
            "/v1/generate",
            headers=headers,
            extra_timeout=prefer if "Prefer" in headers else 0.0,
            **options,
        )
        job = Job.model_validate(response.json())
        if wait is False or job.done:
            return job
        remaining = None if limit is None else limit - (time.monotonic() - started)
        if remaining is not None and remaining <= 0:
            return job
        try:
            return (yield from self.wait(job.id, remaining))
        except JobWaitTimeout as timeout:
            return timeout.job  # generate(wait=N) answers like `Prefer: wait=N`: the job as it is

    def get_job(self, job_id: str) -> Flow[Job]:
        response = yield from self.call("GET", _path("v1", "jobs", job_id))
        return Job.model_validate(response.json())

    def list_jobs(
        self, path: str, limit: int | None, cursor: str | None, kind: str | None = None
    ) -> Flow[JobPage]:
        params = {"limit": limit, "cursor": cursor, "kind": kind}
        response = yield from self.call("GET", path, params=params)
        return JobPage.model_validate(response.json())

    def cancel_job(self, path: str) -> Flow[Job]:
        response = yield from self.call("POST", path)  # cancelling twice is harmless: retried
        return Job.model_validate(response.json())

    def delete(self, path: str) -> Flow[None]:
        yield from self.call("DELETE", path)

    def wait(self, job_id: str, timeout: float | None, poll_interval: float = 2.0) -> Flow[Job]:
        """Poll the job until it is done; `JobWaitTimeout` after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            job = yield from self.get_job(job_id)
            if job.done:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobWaitTimeout(job, timeout or 0.0)
            yield Sleep(delay if left is None else min(delay, left))
            delay = min(poll_interval, delay * 1.5)

    def stream(self, job_id: str, last_event_id: str | None = None, max_reconnects: int = 5) -> Flow[None]:
        """The job's server-sent events until its terminal `status` event; a dropped or closed stream is
        reopened with `Last-Event-ID`, so the server resumes after the last event seen (a stream that ends
        with no event at all, for a job that is done, ends the iteration)."""
        reconnects = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            response = yield from self.call(
                "GET", _path("v1", "jobs", job_id, "events"), headers=headers, stream=True
            )
            parser, retry_ms, received = SSEParser(), None, 0
            while True:
                try:
                    line = yield ReadLine(response)
                except httpx.TransportError:
                    line = None  # the connection broke: reconnect below
                if line is None:
                    break
                raw = parser.feed(line)
                if raw is None:
                    continue
                reconnects, received = 0, received + 1  # the stream makes progress
                last_event_id = raw.id if raw.id is not None else last_event_id
                retry_ms = raw.retry_ms or retry_ms
                event = parse_event(raw.event, raw.data, raw.id)
                yield Emit(event)
                if event.event == "status" and event.job is not None and event.job.done:
                    yield Close(response)
                    return
                if event.event == "error":  # the job is gone: nothing to resume
                    yield Close(response)
                    return
            yield Close(response)
            if not received and (yield from self.get_job(job_id)).done:
                return  # resumed after the job's last event: nothing more will come
            reconnects += 1
            if reconnects > max_reconnects:
                raise APIConnectionError(f"the event stream of job {job_id} kept closing early")
            yield Sleep(retry_ms / 1000 if retry_ms else self.backoff(reconnects - 1))

    # --- images ------------------------------------------------------------------------------------
    def images(self, job: Job) -> Flow[list[bytes]]:
        """The bytes of a succeeded job's images: decoded from `b64_json`, or downloaded from their URLs."""
        if not job.succeeded:
            raise JobFailedError(job)
        images = []
        for output in job.outputs:
            if output.b64_json is not None:
                images.append(base64.b64decode(output.b64_json))
            elif output.url:
                images.append((yield from self.download(output.url)))
            else:
                raise JobFailedError(job)
        return images

    def download(self, url: str) -> Flow[bytes]:
        """An output URL's bytes (presigned: sent without the API key, which another host must not see)."""
        response = yield from self.call("GET", url, authenticate=False)
        return response.content

    # --- fine-tunes, adapters, models, webhooks, admin ---------------------------------------------
    def create_finetune(
        self,
        files: Dataset,
        params: dict[str, Any],
        progress: ProgressHook | None,
        idempotency_key: str | None,
    ) -> Flow[Job]:
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        data = {
            key: json.dumps(value) if isinstance(value, dict | list) else str(value)
            for key, value in _without_none(params).items()
        }
        parts = open_dataset(files)
        try:

            def build() -> httpx.Request:
                multipart = [("files", part) for part in parts]
                request = self.build("POST", "/v1/finetunes", data=data, files=multipart, headers=headers)
                return with_progress(request, progress)

            response = yield from self.send(build)
        finally:
            close_dataset(parts)
        return Job.model_validate(response.json())

    def get_finetune(self, job_id: str) -> Flow[Job]:
        response = yield from self.call("GET", _path("v1", "finetunes", job_id))
        return Job.model_validate(response.json())

    def list_models(self) -> Flow[list[Model]]:
        response = yield from self.call("GET", "/v1/models")
        return [Model.model_validate(item) for item in response.json()["data"]]

    def list_adapters(self) -> Flow[list[Adapter]]:
        response = yield from self.call("GET", "/v1/adapters")
        return [Adapter.model_validate(item) for item in response.json()["data"]]

    def get_adapter(self, adapter_id: str) -> Flow[Adapter]:
        response = yield from self.call("GET", _path("v1", "adapters", adapter_id))
        return Adapter.model_validate(response.json())

    def download_adapter(self, adapter_id: str) -> Flow[bytes]:
        """The adapter as a zip in peft's format (`adapter_config.json`, `adapter_model.safetensors`)."""
        response = yield from self.call("GET", _path("v1", "adapters", adapter_id, "download"))
        return response.content

    def webhook_secret(self, rotate: bool = False) -> Flow[str]:
        if rotate:  # not repeated on a lost answer: each repeat would retire one more secret
            response = yield from self.call(
                "POST", "/v1/webhooks/secret/rotate", retry_connection_errors=False
            )
        else:
            response = yield from self.call("GET", "/v1/webhooks/secret")
        return str(response.json()["secret"])

    def verify_provenance(self, image: str | os.PathLike[str] | bytes) -> Flow[ProvenanceVerification]:
        """An image's Content Credentials and watermark, checked by the server (a read: safe to retry)."""
        if isinstance(image, bytes):
            name, data = "image", image
        else:
            with open(image, "rb") as handle:
                name, data = os.path.basename(image), handle.read()
        response = yield from self.call("POST", "/v1/provenance/verify", files={"file": (name, data)})
        return ProvenanceVerification.model_validate(response.json())

    def embeddings(
        self, images: Sequence[ImageInput], kind: str | None, model: str | None
    ) -> Flow[EmbeddingList]:
        """`POST /v1/embeddings` (synchronous; a read: safe to retry): data URIs and storage keys as JSON, paths
        and bytes as multipart parts."""
        uploads = [image_upload(image) for image in images]
        fields = {"kind": kind, "model": model}
        if all(upload is None for upload in uploads):
            options: dict[str, Any] = {"json_body": _without_none({**fields, "images": list(images)})}
        elif all(upload is not None for upload in uploads):
            options = {"data": form_fields(fields), "files": [("images", upload) for upload in uploads]}
        else:
            raise ValueError("give images either all as files/bytes or all as data URIs/storage keys")
        response = yield from self.call("POST", "/v1/embeddings", **options)
        return EmbeddingList.model_validate(response.json())

    def list_dead_letters(self) -> Flow[list[DeadLetter]]:
        response = yield from self.call("GET", "/v1/admin/dead-letters")
        return [DeadLetter.model_validate(item) for item in response.json()["data"]]

    def replay_dead_letter(self, job_id: str) -> Flow[Job]:
        path = _path("v1", "admin", "dead-letters", job_id, "replay")
        response = yield from self.call("POST", path, retry_connection_errors=False)  # a replay is a new job
        return Job.model_validate(response.json())


def parse_event(event: str, data: str, event_id: str | None) -> JobEvent:
    """A job event: `status` carries the whole job; `progress` carries `{step, total, eta_s}` (older servers
    sent the whole job there too: either is read)."""
    try:
        payload = json.loads(data)
    except ValueError:
        payload = data
    job = progress = None
    if isinstance(payload, dict) and "id" in payload and "status" in payload:
        job = Job.model_validate(payload)
        progress = job.progress
    elif isinstance(payload, dict) and event == "progress":
        progress = Progress.model_validate(payload)
    return JobEvent(event=event, id=event_id, data=payload, job=job, progress=progress)
