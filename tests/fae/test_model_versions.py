"""Model versions through the real embedded server: the catalog shows them, a pinned job runs on its version and
records it, and the chart's `helm test` script passes against a running gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.manifests import write_manifest
from tests.fae.conftest import API_KEY, EmbeddedServer

CHECK_SCRIPT = Path(__file__).resolve().parents[2] / "helm" / "files" / "tests" / "check_release.py"


@pytest.fixture
def two_versions(tmp_path: Path, t2i_model_dir: Path) -> tuple[Path, Path]:
    """Version 1 and a retrained version 2 (other bytes: another fingerprint), each with its manifest."""
    old, new = tmp_path / "models" / "t2i-1", tmp_path / "models" / "t2i-2"
    shutil.copytree(t2i_model_dir, old)
    shutil.copytree(t2i_model_dir, new)
    (new / "NOTES.md").write_text("retrained on more captions\n")
    write_manifest(old, "1")
    write_manifest(new, "2")
    return old, new


def test_models_list_versions_and_jobs_run_on_the_version_they_pin(
    embedded_server: Callable[..., EmbeddedServer], two_versions: tuple[Path, Path]
) -> None:
    old, new = two_versions
    server = embedded_server(models=f"t2i@2={new},t2i@1={old}")
    with server.client() as client:
        models = client.get("/v1/models").json()["data"]
        by_version = {m["version"]: m for m in models}
        assert set(by_version) == {"1", "2"}
        assert by_version["2"]["current"] and by_version["2"]["default"]
        assert not by_version["1"]["current"] and by_version["1"]["name"] == "t2i"
        fp1, fp2 = by_version["1"]["fingerprint"], by_version["2"]["fingerprint"]
        assert fp1 != fp2 and len(fp1) == 64

        def run(model: str) -> dict:
            body = {"model": model, "prompt": "a red apple", "steps": 2, "seed": 1}
            job = client.post("/v1/generate", json=body, headers={"Prefer": "wait=60"}).json()
            assert job["status"] == "succeeded", job
            return job

        plain, pinned, by_fingerprint = run("t2i"), run("t2i@1"), run(f"t2i@{fp1[:12]}")
        assert (plain["model"], plain["model_version"], plain["model_fingerprint"]) == ("t2i", "2", fp2)
        assert (pinned["model"], pinned["model_version"], pinned["model_fingerprint"]) == ("t2i@1", "1", fp1)
        assert (by_fingerprint["model"], by_fingerprint["model_version"]) == (f"t2i@{fp1}", "1")
        # The same seed on two versions: the worker really ran each job on its own version's pipeline.
        assert client.get(f"/v1/jobs/{pinned['id']}").json()["model_version"] == "1"

        unknown = client.post("/v1/generate", json={"model": "t2i@9", "prompt": "x", "steps": 2})
        assert unknown.status_code == 422
        assert "unknown model 't2i@9'" in unknown.json()["detail"]


def test_the_helm_test_script_passes_against_a_running_gateway(
    embedded_server: Callable[..., EmbeddedServer], tmp_path: Path
) -> None:
    server = embedded_server()
    keys = tmp_path / "api-keys"
    keys.write_text(f"ops:ops-key-0123456789:admin\nacme:{API_KEY}:generate+finetune+admin\n")
    env = {"FAE_TEST_GATEWAY_URL": server.base_url, "FAE_API_KEYS_FILE": str(keys), "FAE_TEST_STEPS": "2"}
    for check, says in (("ready", "gateway ready"), ("generate", "generate round trip: job ")):
        result = subprocess.run(
            [sys.executable, str(CHECK_SCRIPT), check],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert says in result.stdout
    assert re.search(r"with tiny-t2i \(version None, fingerprint [0-9a-f]{64}\)", result.stdout), (
        result.stdout
    )

    keys.write_text("ops:ops-key-0123456789:admin\n")  # no key may generate: a clear refusal, not a crash
    result = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), "generate"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "has no API key with the generate scope" in result.stderr
