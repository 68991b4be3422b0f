"""`fae verify IMAGE...`: check images' Content Credentials and watermark offline (no server, no API key).

Trusted signers are the configured signer (FAE_C2PA_SIGN_CERT's leaf, under its chain's root; another
certificate of that CA is not ours), else embedded mode's development signer when it exists under FAE_DATA_DIR,
and any CA in FAE_C2PA_TRUST_ANCHORS and the `--trust` files (trusted whole). Offline there is no job
store, so the watermark's payload is printed, not looked up (the API's verify names the job).
Exit status: 0 when every image has valid credentials, 1 otherwise, 2 for a file that is not an image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.provenance import SignerTrust
    from core.settings import Settings

# The C2PA SDK, numpy and Pillow are imported when the command runs, not when `fae` builds its parser.


def add_command(sub: argparse._SubParsersAction) -> None:
    verify = sub.add_parser("verify", help="check images' Content Credentials and watermark (offline)")
    verify.add_argument("images", nargs="+", type=Path, help="PNG, JPEG or WebP files")
    verify.add_argument(
        "--trust", action="append", type=Path, default=[], help="more trusted CA certificates (PEM)"
    )
    verify.add_argument("--json", action="store_true", help="one JSON object per image")
    verify.set_defaults(handler=verify_command)


def anchors(settings: Settings, extra: list[Path]) -> SignerTrust | None:
    from core.provenance import DEV_DIR, trust_anchors

    provenance = settings.provenance
    chain = provenance.c2pa_sign_cert
    dev_chain = Path(settings.process.data_dir) / DEV_DIR / "dev-signer-chain.pem"
    pems = [p.read_bytes() for p in extra]
    if provenance.c2pa_trust_anchors:
        pems.append(provenance.c2pa_trust_anchors.read_bytes())
    if chain is None and dev_chain.is_file():
        chain = dev_chain
    return trust_anchors(chain.read_bytes() if chain else None, b"".join(pems) or None)


def verify_file(path: Path, trusted: SignerTrust | None) -> dict[str, object]:
    from PIL import Image, UnidentifiedImageError

    from core.provenance import sniff_format, verify_credentials
    from core.watermark import detect, payload_hex

    data = path.read_bytes()
    if sniff_format(data) is None:
        raise ValueError(f"{path} is not a PNG, JPEG or WebP image")
    report = verify_credentials(data, trusted)
    try:
        found = detect(Image.open(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        found = None  # pixels that do not decode (a tampered file) carry no readable watermark
    generation = report.generation or {}
    return {
        "file": str(path),
        "credentials": report.status.value,
        "signer": report.signer,
        "digital_source_type": report.digital_source_type,
        "failures": report.failures,
        "job_id": generation.get("job_id"),
        "model": generation.get("model"),
        "parameters": generation.get("parameters"),
        "watermark": None
        if found is None
        else {"payload": payload_hex(found.payload), "scale": round(found.scale, 3)},
    }


def verify_command(args: argparse.Namespace) -> int:
    from core.provenance import CredentialStatus
    from core.settings import get_settings

    trusted = anchors(get_settings(), args.trust)
    all_valid = True
    for path in args.images:
        result = verify_file(path, trusted)
        all_valid &= result["credentials"] == CredentialStatus.valid.value
        if args.json:
            print(json.dumps(result))
            continue
        mark = result["watermark"]
        print(
            f"{path}: credentials {result['credentials']}"
            + (f" (signer: {result['signer']})" if result["signer"] else "")
        )
        if result["failures"]:
            print(f"  failures: {', '.join(map(str, result['failures']))}")
        if result["job_id"]:
            print(
                f"  job {result['job_id']}, model {json.dumps(result['model'])}, {json.dumps(result['parameters'])}"
            )
        print(f"  watermark: {'payload ' + mark['payload'] if isinstance(mark, dict) else 'none found'}")
    sys.stdout.flush()
    return 0 if all_valid else 1
