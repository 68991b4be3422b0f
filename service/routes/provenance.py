"""`POST /v1/provenance/verify`: does an image carry our Content Credentials, and which of the caller's jobs
made it (from the credentials or the invisible watermark)? Another tenant's job is never named."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from core.images import ImageRefused, decode, read_header
from core.provenance import CredentialStatus, SignerTrust, sniff_format, trust_anchors, verify_credentials
from core.settings import ProvenanceSettings
from core.watermark import detect, payload_hex
from service.deps import GenerateCaller, Services, ServicesDep
from service.edges import GatewayRoute
from service.input_images import read_part
from service.schemas import CredentialsCheck, ProvenanceVerification, WatermarkCheck
from service.validation import invalid

router = APIRouter(prefix="/v1/provenance", tags=["provenance"], route_class=GatewayRoute)


@lru_cache(maxsize=4)
def our_anchors(settings: ProvenanceSettings) -> SignerTrust | None:
    """Whose signatures are ours: the configured signer (its own leaf, under its chain's top CA) and the CAs
    in FAE_C2PA_TRUST_ANCHORS."""
    chain = settings.c2pa_sign_cert.read_bytes() if settings.c2pa_sign_cert else None
    extra = settings.c2pa_trust_anchors.read_bytes() if settings.c2pa_trust_anchors else None
    return trust_anchors(chain or None, extra or None)  # an empty file (/dev/null in Compose) is none


def _decode(data: bytes, max_pixels: int) -> Image.Image | None:
    """The pixels, for the watermark; None when they do not decode (a tampered file still gets its
    credentials checked). An unreadable header or too many pixels is the caller's error."""
    try:
        read_header(data, max_pixels)
    except ImageRefused as exc:
        raise invalid("file", f"the image {exc}") from exc
    try:
        return decode(data, max_pixels)
    except ImageRefused:
        return None


def verify_image(data: bytes, tenant: str, services: Services) -> ProvenanceVerification:
    if sniff_format(data) is None:
        raise invalid("file", "send a PNG, JPEG or WebP image")
    image = _decode(data, services.settings.gateway.max_image_pixels)
    report = verify_credentials(data, our_anchors(services.settings.provenance))
    store = services.store
    credentials = CredentialsCheck(
        status=report.status.value,
        signer=report.signer,
        digital_source_type=report.digital_source_type,
        failures=report.failures,
    )
    if report.status is CredentialStatus.valid and report.generation:
        claimed = str(report.generation.get("job_id") or "")
        if claimed and store.get_for_tenant(tenant, claimed) is not None:
            credentials.job_id = claimed
        credentials.model = report.generation.get("model")
    watermark = WatermarkCheck(found=False)
    found = detect(image) if image is not None else None
    if found is not None:
        watermark.found = True
        owner = store.find_watermark(tenant, payload_hex(found.payload))  # only the caller's tenant's index
        if owner is not None:
            watermark.job_id, watermark.output_index = owner
    return ProvenanceVerification(
        credentials=credentials, watermark=watermark, job_id=credentials.job_id or watermark.job_id
    )


@router.post(
    "/verify",
    response_model=ProvenanceVerification,
    summary="Check an image's Content Credentials and watermark",
    responses={
        413: {"description": "The image is larger than FAE_MAX_DATASET_FILE_BYTES (problem+json)."},
        422: {"description": "Not a PNG, JPEG or WebP image, or too many pixels (problem+json)."},
    },
)
async def verify_provenance(
    file: Annotated[UploadFile, File(description="The image (PNG, JPEG or WebP).")],
    principal: GenerateCaller,
    services: ServicesDep,
) -> ProvenanceVerification:
    limit = services.settings.gateway.max_dataset_file_bytes
    data = await read_part(file, "file", limit)
    return await run_in_threadpool(verify_image, data, principal.tenant, services)
