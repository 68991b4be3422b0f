"""Checks of a request that need more than its schema (the model catalog, the job store, DNS), each failing
as a 422 shaped like FastAPI's own validation errors."""

from __future__ import annotations

import json
from typing import Any

from core.contract import DEFAULT_STRENGTH, GenerateRequest
from core.jobstore import AdapterRegistry
from core.settings import ProvenanceSettings, WebhookSettings
from core.webhooks import WebhookURLRefused, check_webhook_url
from service.catalog import ModelCatalog, ModelInfo
from service.problems import ProblemError, invalid_json


def invalid(field: str, message: str) -> ProblemError:
    """A 422 shaped like FastAPI's validation errors, for checks that need the model or the store."""
    return ProblemError(
        422,
        "Invalid request",
        f"{field}: {message}",
        slug="validation-error",
        errors=[{"loc": ["body", field], "msg": message, "type": "value_error"}],
    )


def parse_json(raw: str | bytes, field: str) -> Any:
    """JSON sent outside a typed body (a fine-tune's JSON body, a form's `metadata`): JSON that does not parse, or
    nests past what the parser can follow, is the caller's error, not a 500."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise invalid(field, "is not valid JSON (or nests too deeply)") from exc


def parse_json_body(raw: bytes) -> Any:
    """A JSON request body parsed by hand (a route that also takes other media types): 400 naming where it
    stops parsing."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise invalid_json(exc.doc, exc.pos, exc.msg) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, or deeper than the parser follows
        detail = "the body does not parse as JSON (not UTF-8 text, or nested too deeply)"
        raise ProblemError(400, None, detail, "invalid-json") from exc


def resolve_model(models: ModelCatalog, name: str | None) -> ModelInfo:
    model = models.resolve(name)
    if model is not None:
        return model
    known = [m.name for m in models.all()]
    if not known:
        raise ProblemError(503, "Service Unavailable", "no models are configured (FAE_MODELS)", "no-models")
    raise invalid("model", f"unknown model {name!r}; available: {', '.join(known)} (GET /v1/models)")


def check_condition(body: GenerateRequest, model: ModelInfo) -> None:
    if model.condition_type == "class":
        classes = f" (0..{model.num_classes - 1})" if model.num_classes else ""
        if body.prompt is not None:
            raise invalid("prompt", f"model {model.name!r} is class-conditional: send class_label{classes}")
        if body.class_label is None:
            raise invalid("class_label", f"model {model.name!r} needs a class_label{classes}")
        if model.num_classes is not None and body.class_label >= model.num_classes:
            raise invalid("class_label", f"{body.class_label} is out of range for {model.name!r}{classes}")
        if body.negative_prompt is not None:
            raise invalid("negative_prompt", f"model {model.name!r} is class-conditional: it takes no text")
    elif model.condition_type == "text":
        if body.class_label is not None:
            raise invalid("class_label", f"model {model.name!r} takes a text prompt, not class_label")
        if body.prompt is None:
            raise invalid("prompt", f"model {model.name!r} needs a prompt")
    elif body.prompt is None and body.class_label is None:
        raise invalid("prompt", "give a prompt or a class_label")


def check_few_step(body: GenerateRequest, model: ModelInfo) -> None:
    """A few-step distilled model runs only its own step counts, with its built-in guidance (catalog)."""
    if model.supported_steps and body.steps not in model.supported_steps:
        counts = ", ".join(map(str, model.supported_steps))
        raise invalid(
            "steps", f"model {model.name!r} is a few-step model: it runs steps {counts}, not {body.steps}"
        )
    if model.distilled_guidance is not None and (
        body.guidance_scale != 1.0 or body.guidance_intervals or body.guidance_schedule != "constant"
    ):
        raise invalid(
            "guidance_scale",
            f"model {model.name!r} has guidance {model.distilled_guidance:g} built in: leave guidance_scale at 1 "
            "with no guidance_intervals or guidance_schedule",
        )
    if model.supported_steps and body.image is not None:
        # Trained from pure noise on its own grid: strength 1 (plain generation) and 0 (reconstruction) only.
        strength = DEFAULT_STRENGTH if body.strength is None else body.strength
        if 0.0 < strength < 1.0:
            raise invalid(
                "strength",
                f"model {model.name!r} is a few-step model: it generates from pure noise (strength 1) or "
                f"reconstructs (strength 0), not image-to-image at strength {strength:g}",
            )
    if model.distilled_guidance is not None and body.negative_prompt is not None:
        raise invalid(
            "negative_prompt",
            f"model {model.name!r} has guidance built in: a negative prompt (which acts through guidance) "
            "would have no effect",
        )


def check_adapter(adapters: AdapterRegistry, tenant: str, body: GenerateRequest, model: ModelInfo) -> None:
    if body.adapter is None:
        return
    record = adapters.get_adapter(tenant, body.adapter)
    if record is None:
        raise invalid("adapter", f"no adapter {body.adapter!r} for this API key (GET /v1/adapters)")
    if record.model != model.name:
        raise invalid(
            "adapter", f"adapter {body.adapter!r} was trained for model {record.model!r}, not {model.name!r}"
        )


def check_watermark(tenant: str, body: GenerateRequest, provenance: ProvenanceSettings) -> None:
    """`watermark: false` only for the tenants the operator allows (FAE_WATERMARK_OPT_OUT_TENANTS)."""
    if not body.watermark and tenant not in provenance.opt_out_tenants():
        raise ProblemError(
            403,
            "Forbidden",
            "watermark: this API key may not turn the watermark off (the operator allows it per tenant)",
            slug="watermark-required",
        )


def check_webhook(url: Any, webhooks: WebhookSettings) -> str | None:
    if url is None:
        return None
    try:
        return check_webhook_url(str(url), webhooks).url
    except WebhookURLRefused as exc:
        raise invalid("webhook_url", str(exc)) from exc
