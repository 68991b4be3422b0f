"""Content Credentials with the real C2PA SDK: the development CA, signing each output format, and reading
back valid, tampered, unknown-signer and absent credentials; the do-not-train assertion of datasets."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import c2pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from PIL import Image

from core.provenance import (
    DEV_CA_NAME,
    GENERATION_ASSERTION,
    TRAINED_ALGORITHMIC_MEDIA,
    CredentialStatus,
    SignerError,
    ensure_development_signer,
    forbids_training,
    generation_manifest,
    issue_development_signer,
    load_signer_files,
    make_development_ca,
    make_development_signer,
    sign_image,
    trust_anchors,
    verify_credentials,
)


def encoded(fmt: str, size: int = 48) -> bytes:
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return buffer.getvalue()


def manifest(job_id: str = "job-1") -> dict:
    return generation_manifest(
        job_id=job_id,
        index=0,
        model={"name": "tiny", "version": "1", "fingerprint": "ab" * 32},
        adapter={"id": "brand", "fingerprint": "cd" * 32},
        parameters={"seed": 7, "steps": 4, "guidance_scale": 2.0},
        watermark={"applied": False, "method": None},
        title="job-1-0.png",
    )


def flip_png_pixel_byte(data: bytes) -> bytes:
    """One byte of the first IDAT chunk's compressed pixels changed, its CRC fixed (a well-formed PNG)."""
    position = data.index(b"IDAT")
    length = struct.unpack(">I", data[position - 4 : position])[0]
    chunk = bytearray(data[position : position + 4 + length])
    chunk[4 + length // 2] ^= 0x01
    crc = struct.pack(">I", zlib.crc32(bytes(chunk)) & 0xFFFFFFFF)
    end = position + 4 + length
    return data[:position] + bytes(chunk) + crc + data[end + 4 :]


@pytest.fixture(scope="module")
def dev_signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_development_signer(tmp_path_factory.mktemp("signer"))


def test_development_ca_and_signer_have_what_c2pa_requires(dev_signer: tuple[Path, Path]) -> None:
    chain_path, key_path = dev_signer
    leaf, ca = x509.load_pem_x509_certificates(chain_path.read_bytes())
    common_name = x509.oid.NameOID.COMMON_NAME
    assert ca.subject.get_attributes_for_oid(common_name)[0].value == DEV_CA_NAME  # named as what it is
    assert "not trusted" in leaf.subject.get_attributes_for_oid(common_name)[0].value
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert (
        ExtendedKeyUsageOID.EMAIL_PROTECTION
        in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    leaf_aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert leaf_aki == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert (chain_path.parent / "dev-ca.pem").is_file() and oct(key_path.stat().st_mode)[-3:] == "600"
    assert ensure_development_signer(chain_path.parent.parent) == dev_signer  # made once, then reused
    assert chain_path.read_bytes() == ensure_development_signer(chain_path.parent.parent)[0].read_bytes()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_signed_outputs_read_back_valid_with_our_assertions(fmt: str, dev_signer: tuple[Path, Path]) -> None:
    signer = load_signer_files(*dev_signer)
    signed = sign_image(encoded(fmt), fmt, manifest(), signer, thumbnail=False)
    anchors = trust_anchors(dev_signer[0].read_bytes())
    report = verify_credentials(signed, anchors)
    assert report.status is CredentialStatus.valid, report.failures
    assert report.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
    assert report.generation is not None and report.generation["job_id"] == "job-1"
    assert report.generation["adapter"] == {"id": "brand", "fingerprint": "cd" * 32}
    assert report.generation["parameters"] == {"seed": 7, "steps": 4, "guidance_scale": 2.0}
    # The SDK's own reader agrees, and no thumbnail was embedded (off by default).
    assert anchors is not None and anchors.anchors_pem is not None
    settings = c2pa.Settings.from_dict({"trust": {"trust_anchors": anchors.anchors_pem.decode()}})
    with (
        c2pa.Context(settings=settings) as context,
        c2pa.Reader(f"image/{fmt}", io.BytesIO(signed), None, context) as reader,
    ):
        assert reader.get_validation_state() == "Trusted"
        active = reader.get_active_manifest()
    labels = [a["label"] for a in active["assertions"]]
    assert "c2pa.actions.v2" in labels and GENERATION_ASSERTION in labels
    assert "thumbnail" not in json.dumps(active)


def test_a_changed_pixel_byte_is_tampered(dev_signer: tuple[Path, Path]) -> None:
    signed = sign_image(encoded("png"), "png", manifest(), load_signer_files(*dev_signer), thumbnail=False)
    report = verify_credentials(flip_png_pixel_byte(signed), trust_anchors(dev_signer[0].read_bytes()))
    assert report.status is CredentialStatus.tampered
    assert "assertion.dataHash.mismatch" in report.failures
    assert report.generation is None  # nothing from a tampered manifest is reported as fact


def test_another_signer_is_unknown_and_no_credentials_is_none(
    dev_signer: tuple[Path, Path], tmp_path: Path
) -> None:
    other = load_signer_files(*ensure_development_signer(tmp_path))
    signed = sign_image(encoded("jpeg"), "jpeg", manifest(), other, thumbnail=False)
    ours = trust_anchors(dev_signer[0].read_bytes())
    assert verify_credentials(signed, ours).status is CredentialStatus.unknown_signer
    assert (
        verify_credentials(signed, None).status is CredentialStatus.unknown_signer
    )  # no anchors: none trusted
    assert verify_credentials(encoded("png"), ours).status is CredentialStatus.none
    with pytest.raises(ValueError, match="not a PNG, JPEG or WebP"):
        verify_credentials(b"GIF89a....", ours)


def test_another_leaf_of_our_signers_ca_is_unknown_not_valid(tmp_path: Path) -> None:
    """The signer's CA is the anchor, but only the configured leaf is us: a second certificate the same CA
    issued signs intact credentials with whatever assertions it likes, and they are not ours."""
    ca, ca_key = make_development_ca()
    ours_chain, ours_key = issue_development_signer(ca, ca_key)
    other_chain, other_key = issue_development_signer(ca, ca_key)
    for name, pem in {
        "ours.pem": ours_chain,
        "ours.key": ours_key,
        "other.pem": other_chain,
        "other.key": other_key,
    }.items():
        (tmp_path / name).write_bytes(pem)
    ours = load_signer_files(tmp_path / "ours.pem", tmp_path / "ours.key")
    other = load_signer_files(tmp_path / "other.pem", tmp_path / "other.key")
    trust = trust_anchors(ours_chain)
    forged = sign_image(encoded("png"), "png", manifest("someone-elses-job"), other, thumbnail=False)
    report = verify_credentials(forged, trust)
    assert report.status is CredentialStatus.unknown_signer
    assert report.failures == ["signingCredential.untrusted"]
    assert (
        report.generation == manifest("someone-elses-job")["assertions"][1]["data"]
    )  # read, not vouched for
    genuine = sign_image(encoded("png"), "png", manifest(), ours, thumbnail=False)
    assert verify_credentials(genuine, trust).status is CredentialStatus.valid
    # A CA the operator trusts whole (FAE_C2PA_TRUST_ANCHORS, `fae verify --trust`) vouches for all its leaves.
    whole = trust_anchors(ours_chain, ca.public_bytes(serialization.Encoding.PEM))
    assert verify_credentials(forged, whole).status is CredentialStatus.valid
    assert verify_credentials(genuine, whole).status is CredentialStatus.valid


def test_a_key_that_is_not_the_leafs_is_refused(dev_signer: tuple[Path, Path], tmp_path: Path) -> None:
    _, _, other_key = make_development_signer()
    (tmp_path / "key.pem").write_bytes(other_key)
    with pytest.raises(SignerError, match="does not belong to the leaf"):
        load_signer_files(dev_signer[0], tmp_path / "key.pem")
    with pytest.raises(SignerError, match="cannot read"):
        load_signer_files(tmp_path / "missing.pem", dev_signer[1])


def training_mining(use: str) -> dict:
    return {
        "label": "c2pa.training-mining",
        "data": {"entries": {"c2pa.ai_generative_training": {"use": use}, "c2pa.data_mining": {"use": use}}},
    }


def test_do_not_train_credentials_are_recognised(dev_signer: tuple[Path, Path]) -> None:
    signer = load_signer_files(*dev_signer)
    forbidden = {"claim_generator_info": [{"name": "camera"}], "assertions": [training_mining("notAllowed")]}
    allowed = {"claim_generator_info": [{"name": "camera"}], "assertions": [training_mining("allowed")]}
    assert forbids_training(sign_image(encoded("jpeg"), "jpeg", forbidden, signer, thumbnail=False))
    assert not forbids_training(sign_image(encoded("jpeg"), "jpeg", allowed, signer, thumbnail=False))
    assert not forbids_training(encoded("png"))
    assert not forbids_training(sign_image(encoded("png"), "png", manifest(), signer, thumbnail=False))
