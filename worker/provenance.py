"""Provenance of generated images, applied in the worker before upload: the invisible watermark (its payload
indexed per tenant in the job store) and signed C2PA Content Credentials (README: Provenance)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.contract import GenerateRequest, Job
from core.jobstore import JobStore
from core.provenance import (
    SignerError,
    SignerFiles,
    fingerprint_files,
    generation_manifest,
    load_signer_files,
    sign_image,
)
from core.settings import ProvenanceSettings
from core.watermark import can_watermark, embed, payload_for, payload_hex

log = logging.getLogger(__name__)


def load_signer(settings: ProvenanceSettings) -> SignerFiles | None:
    """The configured signer; None when there is none and the operator chose credentials `off`.

    SignerError (a ValueError: `fae worker` prints it and exits 2) when none is configured and the policy is
    `refuse`, or when the configured files are unusable: a worker never produces unsigned images by accident."""
    cert, key = settings.c2pa_sign_cert, settings.c2pa_private_key
    if unset(cert) and unset(key):
        if settings.c2pa_without_signer == "off":
            log.warning("no C2PA signer configured: generated images carry no Content Credentials")
            return None
        raise SignerError(
            "no C2PA signer configured: set FAE_C2PA_SIGN_CERT and FAE_C2PA_PRIVATE_KEY (a PEM chain and key, "
            "see README: Provenance), or FAE_C2PA_WITHOUT_SIGNER=off to run without Content Credentials"
        )
    if cert is None or key is None:
        raise SignerError("set both FAE_C2PA_SIGN_CERT and FAE_C2PA_PRIVATE_KEY, or neither")
    return load_signer_files(cert, key, settings.c2pa_tsa_url)


def unset(path: Path | None) -> bool:
    """No file, or an empty one (Compose needs a file for a secret: /dev/null stands for none)."""
    return path is None or (path.is_file() and path.stat().st_size == 0) or str(path) == "/dev/null"


@dataclass(frozen=True)
class Provenance:
    """What one worker applies to every output."""

    signer: SignerFiles | None
    watermark_key: bytes
    thumbnail: bool

    @classmethod
    def from_settings(cls, settings: ProvenanceSettings) -> Provenance:
        signer = load_signer(settings)
        if settings.watermark_key:
            key = settings.watermark_key.encode()
        elif signer is not None:  # every worker holds the same signer secret, so they derive the same key
            key = hashlib.sha256(b"fae-serve watermark key\0" + signer.key_pem).digest()
        else:
            log.warning("no FAE_WATERMARK_KEY and no signer: watermark payloads use a public key")
            key = b"fae-serve public watermark key"
        return cls(signer, key, settings.c2pa_thumbnail)


@lru_cache(maxsize=4)
def provenance_for(settings: ProvenanceSettings) -> Provenance:
    """One `Provenance` per settings (the signer files are read once per worker process)."""
    return Provenance.from_settings(settings)


@dataclass
class ImageProvenance:
    """The inputs of one job's credentials, gathered once per job."""

    job: Job
    request: GenerateRequest
    model: str
    adapter_id: str | None
    adapter_dir: Path | None

    def model_info(self) -> dict[str, Any]:
        return {
            "name": self.model,
            "version": self.job.model_version,
            "fingerprint": self.job.model_fingerprint,
        }

    def adapter_info(self) -> dict[str, Any] | None:
        if self.adapter_id is None:
            return None
        files = [p for p in self.adapter_dir.rglob("*") if p.is_file()] if self.adapter_dir else []
        return {"id": self.adapter_id, "fingerprint": fingerprint_files(files) if files else None}

    def parameters(self, seed: int) -> dict[str, Any]:
        r = self.request
        return {
            "seed": seed,
            "steps": r.steps,
            "guidance_scale": r.guidance_scale,
            "guidance_schedule": r.guidance_schedule,
            "guidance_intervals": [i.model_dump() for i in r.guidance_intervals]
            if r.guidance_intervals
            else None,
            "sampler": r.sampler,
            "class_label": r.class_label,
            "adapter_scale": r.adapter_scale if r.adapter else None,
        }


def mark_images(
    provenance: Provenance, store: JobStore, inputs: ImageProvenance, images: list[Any]
) -> tuple[list[Any], bool]:
    """The images with the watermark (when the request keeps it and they are large enough), its payloads
    indexed under the job's tenant; and whether every image got one."""
    if not inputs.request.watermark or not images or not all(can_watermark(*image.size) for image in images):
        return images, False
    marked = []
    for index, image in enumerate(images):
        payload = payload_for(provenance.watermark_key, inputs.job.tenant, inputs.job.id, index)
        store.put_watermark(inputs.job.tenant, payload_hex(payload), inputs.job.id, index)
        marked.append(embed(image, payload))
    return marked, True


def sign_outputs(
    provenance: Provenance,
    inputs: ImageProvenance,
    encoded: list[tuple[bytes, str]],
    seeds: list[int],
    watermarked: bool,
) -> tuple[list[tuple[bytes, str]], bool]:
    """Every encoded image with its Content Credentials embedded; whether they were (False: no signer)."""
    if provenance.signer is None:
        return encoded, False
    fmt = inputs.request.output_format
    model, adapter = inputs.model_info(), inputs.adapter_info()
    signed = []
    for index, ((data, content_type), seed) in enumerate(zip(encoded, seeds, strict=True)):
        manifest = generation_manifest(
            job_id=inputs.job.id,
            index=index,
            model=model,
            adapter=adapter,
            parameters=inputs.parameters(seed),
            watermark={
                "applied": watermarked,
                "method": "fae-serve spread-spectrum tile v1" if watermarked else None,
            },
            title=f"{inputs.job.id}-{index}.{fmt}",
        )
        signed.append(
            (sign_image(data, fmt, manifest, provenance.signer, provenance.thumbnail), content_type)
        )
    return signed, True
