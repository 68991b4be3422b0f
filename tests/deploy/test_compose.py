"""docker-compose.yml, checked by the real Compose v2 binary (`config`), with no Docker engine."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

LONG_RUNNING = ("redis", "seaweedfs", "gateway", "worker", "webhooks", "prometheus", "grafana")
FAE_SERVICES = ("models-pull", "gateway", "worker", "webhooks")


def run_compose(
    binary: Path, repo_root: Path, *args: str, env_file: str = ".env.example"
) -> subprocess.CompletedProcess:
    # A clean environment: nothing from the caller's shell (or a developer's .env) may fill a required value.
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [
            str(binary),
            "--project-directory",
            str(repo_root),
            "-f",
            "docker-compose.yml",
            "--env-file",
            env_file,
            *args,
        ],
        cwd=repo_root,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def compose_config(compose_binary: Path, repo_root: Path) -> dict[str, Any]:
    result = run_compose(compose_binary, repo_root, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_config_quiet_passes_with_the_example_env(compose_binary: Path, repo_root: Path) -> None:
    result = run_compose(compose_binary, repo_root, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets(compose_binary: Path, repo_root: Path) -> None:
    # No secret has a default: without a .env the configuration is rejected, naming what is missing.
    result = run_compose(compose_binary, repo_root, "config", "-q", env_file=os.devnull)
    assert result.returncode != 0
    # Compose reports whichever missing variable it meets first (Go map order), so match any of them.
    assert re.search(r"required variable \w+ is missing a value: set \w+ in \.env", result.stderr), (
        result.stderr
    )


def test_gpu_worker_reserves_an_nvidia_gpu(compose_config: dict[str, Any]) -> None:
    devices = compose_config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for name in ("gateway", "webhooks"):
        assert "deploy" not in compose_config["services"][name]


def test_every_long_running_service_has_a_healthcheck(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(LONG_RUNNING) | {"models-pull"} == set(services)
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] == "CMD" and not check.get("disable"), name
    assert "/readyz" in " ".join(services["worker"]["healthcheck"]["test"])


def test_depends_on_waits_for_healthy_dependencies(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    conditions = {
        name: {dep: spec["condition"] for dep, spec in s.get("depends_on", {}).items()}
        for name, s in services.items()
    }
    pulled = "service_completed_successfully"
    assert conditions["gateway"] == {
        "redis": "service_healthy",
        "seaweedfs": "service_healthy",
        "models-pull": pulled,
    }
    assert conditions["worker"] == {
        "redis": "service_healthy",
        "seaweedfs": "service_healthy",
        "models-pull": pulled,
    }
    assert conditions["webhooks"]["redis"] == "service_healthy"
    assert conditions["grafana"] == {"prometheus": "service_healthy"}
    for name, deps in conditions.items():
        assert set(deps.values()) <= {"service_healthy", "service_completed_successfully"}, name


def test_redis_keeps_jobs_across_restarts(compose_config: dict[str, Any]) -> None:
    redis = compose_config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])


def test_fae_services_are_hardened_and_use_s3(compose_config: dict[str, Any]) -> None:
    for name in FAE_SERVICES:
        service = compose_config["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["build"]["target"] in {"gateway", "worker"}
    for name in ("gateway", "worker", "webhooks"):
        env = compose_config["services"][name]["environment"]
        assert env["FAE_STORAGE_BACKEND"] == "s3" and env["FAE_REDIS_URL"].startswith("redis://redis:")
    assert compose_config["services"]["gateway"]["build"]["target"] == "gateway"
    assert "FAE_API_KEYS" not in compose_config["services"]["worker"]["environment"]


def test_published_ports_bind_loopback_only(compose_config: dict[str, Any]) -> None:
    published = [(n, p) for n, s in compose_config["services"].items() for p in s.get("ports", [])]
    assert {n for n, _ in published} == {"gateway", "seaweedfs", "prometheus", "grafana"}
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", name


def test_compose_fae_variables_are_real_settings(compose_config: dict[str, Any]) -> None:
    from core.settings import env_names

    known = env_names()
    for name in FAE_SERVICES:
        for variable in compose_config["services"][name].get("environment", {}):
            if variable.startswith("FAE_"):
                assert variable in known, f"{name}: {variable} is not a setting in core.settings"


def test_mounted_config_files_exist_and_match_their_consumers(
    compose_config: dict[str, Any], repo_root: Path
) -> None:
    binds = {
        (name, v["target"]): Path(v["source"])
        for name, s in compose_config["services"].items()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    }
    prometheus_yml = binds[("prometheus", "/etc/prometheus/prometheus.yml")]
    dashboards = binds[("grafana", "/etc/grafana/dashboards")]
    provisioning = binds[("grafana", "/etc/grafana/provisioning")]
    assert prometheus_yml == repo_root / "deploy/prometheus/prometheus.yml"
    assert dashboards == repo_root / "helm/files/dashboards"  # the chart's copy: one dashboard source
    assert (dashboards / "fae.json").is_file()

    provider = yaml.safe_load((provisioning / "dashboards/fae.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"

    # Prometheus scrapes each fae-serve service on the port it listens on.
    scrape = {j["job_name"]: j for j in yaml.safe_load(prometheus_yml.read_text())["scrape_configs"]}
    gateway_sd = scrape["fae-gateway"]["dns_sd_configs"][0]
    worker_sd = scrape["fae-worker"]["dns_sd_configs"][0]
    assert gateway_sd["names"] == ["gateway"] and gateway_sd["port"] == 8000
    assert set(worker_sd["names"]) == {"worker", "webhooks"}
    assert worker_sd["port"] == int(
        compose_config["services"]["worker"]["environment"]["FAE_WORKER_HTTP_PORT"]
    )


def test_models_pull_puts_the_demo_model_into_the_volume_by_default(
    compose_config: dict[str, Any], compose_binary: Path, repo_root: Path, tmp_path: Path
) -> None:
    """Out of the box the stack serves the trained demo model baked into the worker image, verified and
    copied into the models volume by the one-shot `models-pull`; FAE_MODEL_SOURCE points it elsewhere."""
    services = compose_config["services"]
    pull = services["models-pull"]
    assert pull["command"] == ["fae", "models", "pull", "--into", "/models/fae-demo", "--verify-existing"]
    assert pull["environment"]["FAE_MODEL_SOURCE"] == "/opt/fae/models/fae-demo"  # inside the worker image
    assert pull["build"]["target"] == "worker" and pull["restart"] == "no"
    writable = [v for v in pull["volumes"] if v["target"] == "/models"]
    assert writable and not writable[0].get("read_only")
    for name in ("gateway", "worker"):
        assert services[name]["environment"]["FAE_MODELS"] == "fae-demo=/models/fae-demo"
        mounts = [v for v in services[name]["volumes"] if v["target"] == "/models"]
        assert mounts and mounts[0]["read_only"] is True and mounts[0]["source"] == writable[0]["source"]

    env_file = tmp_path / "s3-model.env"
    env_file.write_text(
        (repo_root / ".env.example").read_text()
        + "FAE_MODEL_SOURCE=s3://fae-models/fae/2\nFAE_MODEL_DIR=fae-2\nFAE_MODELS=fae@2=/models/fae-2\n"
    )
    result = run_compose(compose_binary, repo_root, "config", "--format", "json", env_file=str(env_file))
    assert result.returncode == 0, result.stderr
    configured = json.loads(result.stdout)["services"]
    assert configured["models-pull"]["environment"]["FAE_MODEL_SOURCE"] == "s3://fae-models/fae/2"
    assert configured["models-pull"]["command"][4] == "/models/fae-2"
    assert configured["worker"]["environment"]["FAE_MODELS"] == "fae@2=/models/fae-2"


def test_c2pa_signer_is_a_compose_secret_with_the_key_only_in_the_worker(
    compose_config: dict[str, Any],
) -> None:
    services, secrets = compose_config["services"], compose_config["secrets"]
    assert set(secrets) == {"c2pa-chain", "c2pa-key"}
    gateway, worker = services["gateway"], services["worker"]
    assert [s["source"] for s in gateway["secrets"]] == ["c2pa-chain"]  # verifies; never signs
    assert {s["source"] for s in worker["secrets"]} == {"c2pa-chain", "c2pa-key"}
    assert gateway["environment"]["FAE_C2PA_SIGN_CERT"] == worker["environment"]["FAE_C2PA_SIGN_CERT"]
    assert worker["environment"]["FAE_C2PA_PRIVATE_KEY"] == "/run/secrets/c2pa-key"
    assert "FAE_C2PA_PRIVATE_KEY" not in gateway["environment"]
    assert worker["environment"]["FAE_C2PA_WITHOUT_SIGNER"] == "refuse"
