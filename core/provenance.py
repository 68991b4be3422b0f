"""C2PA Content Credentials: what both sides share. The worker signs outputs with it (worker/provenance.py),
the gateway and `fae verify` read them, the dataset upload refuses do-not-train images.

All reading and signing goes through the maintained C2PA SDK (`c2pa-python`, offline). A signer is a PEM
certificate chain (leaf first) and its private key, from files the operator mounts; embedded mode makes a
development CA and signer under the data directory (`ensure_development_signer`), named as untrusted.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import io
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.atomic import write_bytes_atomically

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION_ASSERTION = "org.fae-serve.generation"  # our own assertion: job, model, adapter, parameters
TRAINING_MINING_LABELS = ("c2pa.training-mining", "cawg.training-mining")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEV_DIR = "provenance"  # under the data directory: the development CA and signer
DEV_CA_NAME = "fae-serve development CA — not trusted"
DEV_SIGNER_NAME = "fae-serve development signer — not trusted"


def software_version() -> str:
    try:
        return package_version("fae-serve")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0+unknown"


class SignerError(ValueError):
    """A configured signer that cannot be used (missing or unreadable files, a key that does not match)."""


@dataclass(frozen=True)
class SignerFiles:
    """The PEM texts of a signer: the chain (leaf first, then intermediates, optionally the root) and key."""

    chain_pem: bytes
    key_pem: bytes
    tsa_url: str | None = None

    @property
    def algorithm(self) -> str:
        """The C2PA signing algorithm the key calls for."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}[key.curve.name]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return "ed25519"
        if isinstance(key, rsa.RSAPrivateKey):
            return "ps256"
        raise SignerError(
            f"unsupported signing key type {type(key).__name__}: use EC P-256/384, Ed25519 or RSA"
        )

    def signer(self) -> c2pa.Signer:
        info = c2pa.C2paSignerInfo(self.algorithm, self.chain_pem, self.key_pem, self.tsa_url or None)
        return c2pa.Signer.from_info(info)

    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.chain_pem)


def load_signer_files(chain_path: Path, key_path: Path, tsa_url: str = "") -> SignerFiles:
    """Read and check a signer: both files exist, the chain parses and the key is the leaf's."""
    try:
        chain_pem, key_pem = Path(chain_path).read_bytes(), Path(key_path).read_bytes()
    except OSError as exc:
        raise SignerError(f"cannot read the C2PA signer: {exc}") from exc
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise SignerError(f"the C2PA signer's certificate chain or key is not valid PEM: {exc}") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.PEM, public) != key.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise SignerError(
            f"the private key {key_path} does not belong to the leaf certificate of {chain_path}"
        )
    return SignerFiles(chain_pem, key_pem, tsa_url or None)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fae-serve development (not trusted)"),
        ]
    )


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


def make_development_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh development CA (keyCertSign, a subject key identifier) and its key."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(DEV_CA_NAME)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def issue_development_signer(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, valid_days: int = 825
) -> tuple[bytes, bytes]:
    """A leaf signer ``ca`` issues: (chain PEM (leaf + CA), leaf key PEM). The leaf has digitalSignature and the
    emailProtection EKU that C2PA accepts for claim signers, and subject/authority key identifiers, as the C2PA
    SDK's validation requires."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(DEV_SIGNER_NAME))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return leaf.public_bytes(pem) + ca.public_bytes(pem), key_pem


def make_development_signer(valid_days: int = 825) -> tuple[bytes, bytes, bytes]:
    """A fresh development CA and a leaf signer it issued: (CA PEM, chain PEM (leaf + CA), leaf key PEM).
    The CA's key is not kept: nothing else is ever issued under it."""
    ca, ca_key = make_development_ca()
    chain_pem, key_pem = issue_development_signer(ca, ca_key, valid_days)
    return ca.public_bytes(serialization.Encoding.PEM), chain_pem, key_pem


def ensure_development_signer(data_dir: Path) -> tuple[Path, Path]:
    """The development signer under ``data_dir/provenance/`` (made on first run, then reused): chain, key."""
    folder = Path(data_dir) / DEV_DIR
    chain, key = folder / "dev-signer-chain.pem", folder / "dev-signer-key.pem"
    if not (chain.is_file() and key.is_file()):
        ca_pem, chain_pem, key_pem = make_development_signer()
        write_bytes_atomically(folder / "dev-ca.pem", ca_pem)
        write_bytes_atomically(key, key_pem)
        write_bytes_atomically(chain, chain_pem)
    return chain, key


def _context(settings: dict[str, Any], signer: c2pa.Signer | None = None) -> c2pa.Context:
    return c2pa.Context(settings=c2pa.Settings.from_dict(settings), signer=signer)


def generation_manifest(
    *,
    job_id: str,
    index: int,
    model: dict[str, Any],
    adapter: dict[str, Any] | None,
    parameters: dict[str, Any],
    watermark: dict[str, Any],
    title: str,
) -> dict[str, Any]:
    """The manifest of one generated image: a `c2pa.created` action (trained algorithmic media, made by
    fae-serve) and our generation assertion (job, model, adapter, reproduction parameters, watermark)."""
    agent = {"name": "fae-serve", "version": software_version()}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                            "description": "Generated by an image model served by fae-serve",
                        }
                    ]
                },
            },
            {
                "label": GENERATION_ASSERTION,
                "data": {
                    "job_id": job_id,
                    "output_index": index,
                    "model": model,
                    "adapter": adapter,
                    "parameters": parameters,
                    "watermark": watermark,
                },
            },
        ],
    }


def sign_image(
    data: bytes, output_format: str, manifest: dict[str, Any], signer: SignerFiles, thumbnail: bool
) -> bytes:
    """``data`` (an encoded image) with the manifest embedded and signed."""
    settings = {"builder": {"thumbnail": {"enabled": thumbnail}}, "verify": {"verify_after_sign": False}}
    with _context(settings, signer.signer()) as context, c2pa.Builder(manifest, context=context) as builder:
        out = io.BytesIO()
        builder.sign(MIME_TYPES[output_format], io.BytesIO(data), out)
        return out.getvalue()


class CredentialStatus(enum.StrEnum):
    valid = "valid"  # signed by our signer (or under a CA the operator trusts whole), nothing changed since
    tampered = "tampered"  # a manifest whose signature or content hashes no longer match
    unknown_signer = "unknown_signer"  # intact, but signed by someone else (also: another leaf of our CA)
    none = "none"  # no Content Credentials at all


@dataclass(frozen=True)
class CredentialReport:
    status: CredentialStatus
    failures: list[str]
    signer: str | None = None
    generation: dict[str, Any] | None = None  # our assertion, when the manifest has one
    digital_source_type: str | None = None


def sniff_format(data: bytes) -> str | None:
    """png, jpeg or webp from the magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


@dataclass(frozen=True)
class SignerTrust:
    """Whose signatures verify reports as `valid`: the configured signer, pinned to its own leaf certificate
    (its chain's top CA is the anchor, but another certificate that CA issued is someone else), and the CAs
    the operator trusts whole (`FAE_C2PA_TRUST_ANCHORS`, `fae verify --trust`)."""

    signer_chain_pem: bytes | None = None
    extra_anchors_pem: bytes | None = None

    @property
    def anchors_pem(self) -> bytes | None:
        """Every CA certificate the SDK checks chains against: the signer chain's top and the extra ones."""
        anchors = []
        if self.signer_chain_pem:
            top = x509.load_pem_x509_certificates(self.signer_chain_pem)[-1]
            anchors.append(top.public_bytes(serialization.Encoding.PEM))
        if self.extra_anchors_pem:
            anchors.append(self.extra_anchors_pem)
        return b"".join(anchors) or None

    def is_our_leaf(self, signature_info: dict[str, Any]) -> bool:
        """Whether the manifest's signing certificate (as the SDK describes it) is our signer's leaf: the same
        serial number, issuer organization and subject common name. Asked only of a manifest the SDK found
        trusted, so the certificate chains to one of our anchors, whose serial numbers are unique."""
        if not self.signer_chain_pem:
            return False
        leaf = x509.load_pem_x509_certificates(self.signer_chain_pem)[0]

        def first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
            values = name.get_attributes_for_oid(oid)
            return str(values[0].value) if values else None

        return (
            str(signature_info.get("cert_serial_number")) == str(leaf.serial_number)
            and signature_info.get("issuer") == first(leaf.issuer, NameOID.ORGANIZATION_NAME)
            and signature_info.get("common_name") == first(leaf.subject, NameOID.COMMON_NAME)
        )


def _read_store(data: bytes, trust_anchors_pem: bytes | None) -> dict[str, Any] | None:
    fmt = sniff_format(data)
    if fmt is None:
        raise ValueError("not a PNG, JPEG or WebP image")
    settings: dict[str, Any] = {
        "verify": {"verify_trust": bool(trust_anchors_pem), "remote_manifest_fetch": False}
    }
    if trust_anchors_pem:
        settings["trust"] = {"trust_anchors": trust_anchors_pem.decode()}
    try:
        with _context(settings) as context:
            reader = c2pa.Reader.try_create(MIME_TYPES[fmt], io.BytesIO(data), None, context)
            if reader is None:
                return None
            with reader:
                return json.loads(reader.json())
    except c2pa.C2paError as exc:  # a manifest so broken it cannot be parsed counts as tampered
        return {"validation_state": "Invalid", "_error": str(exc)}


def verify_credentials(data: bytes, trust: SignerTrust | None) -> CredentialReport:
    """Whether ``data`` carries Content Credentials, and whether they are ours and intact.

    ``trust``: whose signatures count as ours (see `SignerTrust`); without it, every intact manifest is from
    an unknown signer."""
    trust = trust or SignerTrust()
    store = _read_store(data, trust.anchors_pem)
    if store is None:
        return CredentialReport(CredentialStatus.none, [])
    state = store.get("validation_state")
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = [f["code"] for f in results.get("failure", [])] or (
        [store["_error"]] if "_error" in store else []
    )
    trust_failures = {"signingCredential.untrusted", "signingCredential.invalid"}
    generation = next(
        (a["data"] for a in active.get("assertions", []) if a.get("label") == GENERATION_ASSERTION), None
    )
    source_type = next(
        (
            action.get("digitalSourceType")
            for a in active.get("assertions", [])
            if a.get("label", "").startswith("c2pa.actions")
            for action in a.get("data", {}).get("actions", [])
            if action.get("action") == "c2pa.created"
        ),
        None,
    )
    signature_info = active.get("signature_info") or {}
    signer = signature_info.get("common_name")
    if (
        state == "Trusted"
        and not trust.is_our_leaf(signature_info)
        and not _trusted_by(data, trust.extra_anchors_pem)
    ):
        state = "Valid"  # chains to our signer's CA, but is not our signer: someone else that CA certified
        failures = [*failures, "signingCredential.untrusted"]
    if state == "Trusted":
        status = CredentialStatus.valid
    elif [f for f in failures if f not in trust_failures] or state not in ("Valid", "Trusted"):
        status = CredentialStatus.tampered
    else:
        status = CredentialStatus.unknown_signer
    return CredentialReport(
        status, failures, signer, generation if status is not CredentialStatus.tampered else None, source_type
    )


def forbids_training(data: bytes) -> bool:
    """True when the image's Content Credentials carry a training-and-data-mining assertion that says
    `notAllowed` for (generative) AI training. Unreadable or absent credentials forbid nothing."""
    fmt = sniff_format(data)
    if fmt is None:
        return False
    try:
        store = _read_store(data, None)
    except ValueError:
        return False
    for manifest in (store or {}).get("manifests", {}).values():
        for assertion in manifest.get("assertions", []):
            if assertion.get("label", "").split(".v")[0] not in TRAINING_MINING_LABELS:
                continue
            entries = assertion.get("data", {}).get("entries", {})
            for use, entry in entries.items():
                if "training" in use and (entry or {}).get("use") == "notAllowed":
                    return True
    return False


def _trusted_by(data: bytes, anchors_pem: bytes | None) -> bool:
    """Whether the image's active manifest chains to one of ``anchors_pem`` (CAs trusted whole)."""
    if not anchors_pem:
        return False
    return (_read_store(data, anchors_pem) or {}).get("validation_state") == "Trusted"


def trust_anchors(chain_pem: bytes | None, extra_pem: bytes | None = None) -> SignerTrust | None:
    """Whose signatures count as ours: the signer of ``chain_pem`` (leaf first; pinned to that leaf, under the
    chain's top CA) and the CAs in ``extra_pem`` the operator trusts whole. None when neither is given."""
    if not chain_pem and not extra_pem:
        return None
    return SignerTrust(chain_pem or None, extra_pem or None)


def fingerprint_files(paths: list[Path]) -> str:
    """SHA-256 over files' names and bytes, in name order (an adapter's fingerprint)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
