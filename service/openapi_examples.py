"""Examples in the OpenAPI document (service/openapi.py): one per request body and per response, by operation
id and status. tests/service/test_openapi.py checks that each validates against its schema."""

from __future__ import annotations

from typing import Any

_JOB_ID = "3f2b9c1e8d7a4b6c9e0f1a2b3c4d5e6f"
_REQUEST_ID = "7d2c0a4f9e3b4c5d8a1b2c3d4e5f6a7b"
_URL = (
    "https://storage.example.com/tenants/acme/jobs/3f2b9c1e8d7a4b6c9e0f1a2b3c4d5e6f/0.png?X-Amz-Signature=..."
)

GENERATE_REQUEST_EXAMPLE: dict[str, Any] = {
    "prompt": "a red apple on a wooden table, studio light",
    "n": 2,
    "steps": 50,
    "guidance_scale": 4.0,
    "seed": 1234,
    "output_format": "png",
    "metadata": {"order": "A-1"},
}

JOB_EXAMPLE: dict[str, Any] = {
    "id": _JOB_ID,
    "kind": "generate",
    "status": "succeeded",
    "tenant": "acme",
    "model": "default",
    "request": {**GENERATE_REQUEST_EXAMPLE, "model": "default"},
    "metadata": {"order": "A-1"},
    "created_at": "2026-12-01T12:00:00.000000Z",
    "started_at": "2026-12-01T12:00:00.150000Z",
    "finished_at": "2026-12-01T12:00:03.200000Z",
    "queue_position": None,
    "progress": {"step": 50, "total": 50, "eta_s": 0.0, "loss": None},
    "outputs": [
        {
            "index": 0,
            "seed": 1234,
            "key": f"tenants/acme/jobs/{_JOB_ID}/0.png",
            "url": _URL,
            "expires_at": "2026-12-01T13:00:03Z",
            "content_type": "image/png",
        },
        {
            "index": 1,
            "seed": 1235,
            "key": f"tenants/acme/jobs/{_JOB_ID}/1.png",
            "url": _URL.replace("/0.png", "/1.png"),
            "expires_at": "2026-12-01T13:00:03Z",
            "content_type": "image/png",
        },
    ],
    "seeds": [1234, 1235],
    "error": None,
    "attempts": 1,
    "cancel_requested": False,
    "timings": {"queued": 0.15, "denoise": 2.7, "decode": 0.2, "upload": 0.1, "total": 3.2},
    "adapter_id": None,
    "request_id": _REQUEST_ID,
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "links": {
        "self": f"/v1/jobs/{_JOB_ID}",
        "cancel": f"/v1/jobs/{_JOB_ID}/cancel",
        "events": f"/v1/jobs/{_JOB_ID}/events",
        "outputs": [_URL, _URL.replace("/0.png", "/1.png")],
    },
}

QUEUED_JOB_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE,
    "status": "queued",
    "started_at": None,
    "finished_at": None,
    "queue_position": 0,
    "progress": {"step": 0, "total": 0, "eta_s": None, "loss": None},
    "outputs": [],
    "seeds": [],
    "attempts": 0,
    "timings": {},
    "links": {**JOB_EXAMPLE["links"], "outputs": []},
}

_FINETUNE_ID = "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b"
FINETUNE_PARAMS_EXAMPLE: dict[str, Any] = {
    "name": "brand-look",
    "steps": 500,
    "rank": 8,
    "trigger_phrase": "in acme style",
    "metadata": {"campaign": "spring"},
}
FINETUNE_JOB_EXAMPLE: dict[str, Any] = {
    **QUEUED_JOB_EXAMPLE,
    "id": _FINETUNE_ID,
    "kind": "finetune",
    "request": {**FINETUNE_PARAMS_EXAMPLE, "model": "default", "dataset_images": 24},
    "metadata": {"campaign": "spring"},
    "links": {
        "self": f"/v1/jobs/{_FINETUNE_ID}",
        "cancel": f"/v1/jobs/{_FINETUNE_ID}/cancel",
        "events": f"/v1/jobs/{_FINETUNE_ID}/events",
        "outputs": [],
    },
}

ADAPTER_EXAMPLE: dict[str, Any] = {
    "id": _FINETUNE_ID,
    "model": "default",
    "name": "brand-look",
    "job_id": _FINETUNE_ID,
    "rank": 8,
    "steps": 500,
    "trigger_phrase": "in acme style",
    "created_at": "2026-12-01T12:10:00Z",
    "base_fingerprint": "5d41402abc4b2a76b9719d911017c592",
    "condition_type": "text",
    "adapter_bytes": 1048576,
    "final_loss": 0.041,
    "total_duration_s": 312.5,
}

MODEL_EXAMPLE: dict[str, Any] = {
    "name": "default",
    "version": "1.0.0",
    "fingerprint": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "current": True,
    "condition_type": "text",
    "num_classes": None,
    "image_size": 256,
    "default": True,
}

DEAD_LETTER_EXAMPLE: dict[str, Any] = {
    "job_id": _JOB_ID,
    "tenant": "acme",
    "kind": "generate",
    "reason": "worker_lost",
    "deliveries": 4,
    "at": "2026-12-01T12:30:00Z",
}

WEBHOOK_SECRET_EXAMPLE: dict[str, Any] = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "previous_valid_until": None,
    "scheme": "standard-webhooks",
    "headers": ["webhook-id", "webhook-timestamp", "webhook-signature"],
}

PROVENANCE_EXAMPLE: dict[str, Any] = {
    "credentials": {
        "status": "valid",
        "signer": "fae-serve",
        "digital_source_type": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
        "failures": [],
        "job_id": _JOB_ID,
        "model": {"name": "default", "version": "1.0.0"},
    },
    "watermark": {"found": True, "job_id": _JOB_ID, "output_index": 0},
    "job_id": _JOB_ID,
}

# multipart request bodies: each file field as a file name
MULTIPART_EXAMPLES: dict[str, Any] = {
    "createFinetune": {
        "files": ["brand.zip"],
        "name": "brand-look",
        "steps": 500,
        "rank": 8,
        "trigger_phrase": "in acme style",
    },
    "verifyProvenance": {"file": "image.png"},
    "generate": {"image": "product.png", "prompt": "red apple", "strength": 0.6, "n": 4, "seed": 1},
    "createEmbeddings": {"images": ["a.png", "b.png"], "kind": "encoder"},
}

REQUEST_EXAMPLES: dict[str, Any] = {
    "generate": GENERATE_REQUEST_EXAMPLE,
    "createFinetune": {**FINETUNE_PARAMS_EXAMPLE, "s3_prefix": "tenants/acme/brand-images/"},
    "createImage": {"model": "default", "prompt": "a red apple", "n": 1, "response_format": "url"},
    "createEmbeddings": {"images": ["tenants/acme/catalog/sku-1.png"], "kind": "latent"},
}

_JOB_PAGE = {"data": [JOB_EXAMPLE], "next_cursor": "1764590400000-3f2b9c1e"}

RESPONSE_EXAMPLES: dict[str, dict[int, Any]] = {
    "generate": {200: JOB_EXAMPLE, 202: QUEUED_JOB_EXAMPLE},
    "createEmbeddings": {
        200: {
            "object": "list",
            "model": "fae-demo",
            "kind": "latent",
            "dimensions": 4,
            "data": [{"index": 0, "embedding": [0.12, -0.53, 1.04, 0.08]}],
            "job_id": _JOB_ID,
        }
    },
    "listJobs": {200: _JOB_PAGE},
    "getJob": {200: JOB_EXAMPLE},
    "cancelJob": {
        200: {**QUEUED_JOB_EXAMPLE, "status": "canceled"},
        202: {**JOB_EXAMPLE, "status": "running"},
    },
    "createFinetune": {202: FINETUNE_JOB_EXAMPLE, 200: FINETUNE_JOB_EXAMPLE},
    "listFinetunes": {200: {"data": [FINETUNE_JOB_EXAMPLE], "next_cursor": None}},
    "getFinetune": {200: FINETUNE_JOB_EXAMPLE},
    "cancelFinetune": {200: {**FINETUNE_JOB_EXAMPLE, "status": "canceled"}},
    "listModels": {200: {"data": [MODEL_EXAMPLE]}},
    "listAdapters": {200: {"data": [ADAPTER_EXAMPLE]}},
    "getAdapter": {200: ADAPTER_EXAMPLE},
    "getWebhookSecret": {200: WEBHOOK_SECRET_EXAMPLE},
    "rotateWebhookSecret": {
        200: {**WEBHOOK_SECRET_EXAMPLE, "previous_valid_until": "2026-12-02T12:00:00Z"},
    },
    "listDeadLetters": {200: {"data": [DEAD_LETTER_EXAMPLE]}},
    "replayDeadLetter": {202: QUEUED_JOB_EXAMPLE},
    "healthz": {200: {"status": "ok"}},
    "readyz": {200: {"status": "ready", "checks": {"job_store": True, "storage": True, "queue": True}}},
    "createImage": {200: {"created": 1764590403, "data": [{"url": _URL, "revised_prompt": None}]}},
    "verifyProvenance": {200: PROVENANCE_EXAMPLE},
}

# status -> (problem slug, detail) for the error examples
ERROR_DETAILS: dict[int, tuple[str, str]] = {
    400: ("invalid-json", "the body is not valid JSON: Expecting value at line 1, column 15 (char 14)"),
    401: ("unauthorized", "send an API key as `Authorization: Bearer <key>`"),
    403: ("missing-scope", "this API key lacks the `finetune` scope"),
    404: ("not-found", "no job '3f2b9c1e8d7a4b6c9e0f1a2b3c4d5e6f' for this API key"),
    409: ("job-not-finished", "job 3f2b9c1e... is running; cancel it, then delete it"),
    413: ("body-too-large", "the request body is larger than 1048576 bytes"),
    415: ("unsupported-media-type", "send the body as application/json (this request has no Content-Type)"),
    422: ("validation-error", "n: Input should be less than or equal to 8"),
    429: ("rate-limited", "more than 60 requests a minute for this tenant; slow down"),
    503: ("store-unavailable", "the job store is unreachable; retry shortly"),
    504: ("timeout", "the embeddings were not ready within 60 s"),
}
