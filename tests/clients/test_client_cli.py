"""`fae-client` (and `fae remote`) as a user runs them: separate processes, URL and key from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAE_")}
    return subprocess.run(args, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=180)


def fae_client(*args: str) -> list[str]:
    return [sys.executable, "-m", "fae_client.cli", *args]


def test_generate_writes_the_image_and_jobs_commands_read_it(live_server, tmp_path: Path) -> None:
    env = live_server.env()
    made = run(
        fae_client("generate", "--class-label", "1", "--steps", "3", "--seed", "5", "-o", "out.png"),
        env,
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    assert job["status"] == "succeeded" and (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    shown = run(fae_client("jobs", "get", job["id"]), env, tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == job["id"]
    listed = run(fae_client("jobs", "list", "--limit", "5"), env, tmp_path)
    assert job["id"] in {j["id"] for j in json.loads(listed.stdout)["data"]}
    waited = run(fae_client("jobs", "wait", job["id"], "--timeout", "10"), env, tmp_path)
    assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "succeeded"
    models = run(fae_client("models"), env, tmp_path)
    assert [m["name"] for m in json.loads(models.stdout)] == ["tiny"]
    queued = run(
        fae_client("generate", "--class-label", "2", "--steps", "200", "-n", "8", "--wait", "0"),
        env,
        tmp_path,
    )
    canceled = run(fae_client("jobs", "cancel", json.loads(queued.stdout)["id"]), env, tmp_path)
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["id"] == json.loads(queued.stdout)["id"]


def test_flags_override_the_environment_and_errors_are_one_line(live_server, tmp_path: Path) -> None:
    flags = ["--base-url", live_server.base_url, "--api-key", live_server.key]
    ok = run(fae_client("adapters", "list", *flags), {"FAE_API_KEY": "wrong"}, tmp_path)
    assert ok.returncode == 0, ok.stderr and isinstance(json.loads(ok.stdout), list)
    denied = run(fae_client("models"), {**live_server.env(), "FAE_API_KEY": "wrong"}, tmp_path)
    assert denied.returncode == 1 and denied.stderr.startswith("fae-client: error: 401")
    invalid = run(fae_client("generate", "--class-label", "1", "-n", "99"), live_server.env(), tmp_path)
    assert invalid.returncode == 1 and "422" in invalid.stderr and "n:" in invalid.stderr
    assert "Traceback" not in denied.stderr + invalid.stderr


def test_finetune_create_uploads_a_directory(live_server, tmp_path: Path) -> None:
    from model.synthetic import write_dataset

    data = write_dataset(tmp_path / "brand", 10, "brand", seed=2, size=32)
    made = run(
        fae_client("finetune", "create", str(data), "--steps", "1", "--rank", "1", "--wait"),
        live_server.env(),
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    assert job["kind"] == "finetune" and job["status"] == "succeeded" and job["adapter_id"]


def test_fae_remote_delegates_to_the_client(live_server, tmp_path: Path) -> None:
    shown = run([sys.executable, "-m", "fae.cli", "remote", "models"], live_server.env(), REPO)
    assert shown.returncode == 0, shown.stderr
    assert [m["name"] for m in json.loads(shown.stdout)] == ["tiny"]
    usage = run([sys.executable, "-m", "fae.cli", "remote", "--help"], {}, REPO)
    assert usage.returncode == 0 and "fae remote" in usage.stdout
