"""A generate worker without a C2PA signer refuses to start (FAE_C2PA_WITHOUT_SIGNER=refuse, the default) or
runs with credentials off, as the operator chose; a configured signer is checked before anything loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.provenance import SignerError, ensure_development_signer
from core.settings import Settings
from worker.provenance import Provenance, load_signer

REPO = Path(__file__).resolve().parents[2]


def test_no_signer_refuses_by_default_and_off_runs_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAE_C2PA_SIGN_CERT")  # conftest gives every worker test a signer
    monkeypatch.delenv("FAE_C2PA_PRIVATE_KEY")
    with pytest.raises(SignerError, match="no C2PA signer configured: set FAE_C2PA_SIGN_CERT"):
        load_signer(Settings().provenance)
    off = Settings().override(c2pa_without_signer="off").provenance
    assert load_signer(off) is None
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")  # Compose's secret for "none" (/dev/null or an empty file)
    assert (
        load_signer(
            Settings()
            .override(c2pa_without_signer="off", c2pa_sign_cert=empty, c2pa_private_key="/dev/null")
            .provenance
        )
        is None
    )
    with pytest.raises(SignerError, match="both"):
        load_signer(Settings().override(c2pa_sign_cert=empty.parent / "chain.pem").provenance)


def test_a_configured_signer_is_loaded_and_keys_the_watermark(tmp_path: Path) -> None:
    chain, key = ensure_development_signer(tmp_path)
    settings = Settings().override(c2pa_sign_cert=chain, c2pa_private_key=key).provenance
    provenance = Provenance.from_settings(settings)
    assert provenance.signer is not None and provenance.signer.algorithm == "es256"
    assert (
        provenance.watermark_key == Provenance.from_settings(settings).watermark_key
    )  # same for every worker
    explicit = Settings().override(c2pa_sign_cert=chain, c2pa_private_key=key, watermark_key="k").provenance
    assert Provenance.from_settings(explicit).watermark_key == b"k"
    assert provenance.thumbnail is False  # thumbnails are off unless asked for


def test_fae_worker_without_a_signer_exits_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}  # no signer
    env |= {"FAE_DATA_DIR": str(tmp_path), "FAE_REDIS_URL": "redis://127.0.0.1:1/0"}  # never reached
    result = subprocess.run(
        [sys.executable, "-m", "fae.cli", "worker", "--queues", "generate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "fae worker: error: no C2PA signer configured" in result.stderr
    assert "FAE_C2PA_WITHOUT_SIGNER=off" in result.stderr
