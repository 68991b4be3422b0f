"""The Dockerfile: hadolint clean, pinned bases, non-root, health-checked, no secrets (no engine here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SECRET_WORDS = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)", re.IGNORECASE)


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions per build stage name (comment lines dropped as Docker does, continuations joined)."""
    without_comments = "\n".join(line for line in dockerfile.splitlines() if not line.strip().startswith("#"))
    logical = re.sub(r"\\\n", " ", without_comments)
    out: dict[str, list[str]] = {}
    current = ""
    for line in logical.splitlines():
        line = line.strip()
        if not line:
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(2)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


@pytest.fixture(scope="module")
def dockerfile(repo_root: Path) -> str:
    return (repo_root / "Dockerfile").read_text()


def test_hadolint_passes(hadolint_binary: str, repo_root: Path) -> None:
    result = subprocess.run(
        [hadolint_binary, "--failure-threshold", "style", "Dockerfile"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned(dockerfile: str) -> None:
    base_args = dict(re.findall(r"^ARG\s+(\w+_IMAGE)=(\S+)$", dockerfile, re.MULTILINE))
    assert set(base_args) == {"PYTHON_IMAGE", "TORCH_IMAGE"}
    for image in base_args.values():
        _, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), image
    assert re.search(r"cuda\d+\.\d+", base_args["TORCH_IMAGE"])


def test_runtime_targets_run_as_non_root_with_a_healthcheck(dockerfile: str) -> None:
    by_stage = stages(dockerfile)
    assert {"wheel", "gateway-build", "worker", "gateway"} <= set(by_stage)
    for target, port in (("gateway", "8000"), ("worker", "9101")):
        instructions = by_stage[target]
        users = [i.split()[1] for i in instructions if i.upper().startswith("USER ")]
        assert users and users[-1].split(":")[0] not in {"root", "0"}, target
        healthchecks = [i for i in instructions if i.upper().startswith("HEALTHCHECK ")]
        assert len(healthchecks) == 1 and f"127.0.0.1:{port}/healthz" in healthchecks[0], target
        assert any(i.upper().startswith(f"EXPOSE {port}") for i in instructions), target
    assert stages(dockerfile).popitem()[0] == "gateway"  # `docker build .` gives the slim image


def test_gateway_image_has_no_torch(dockerfile: str) -> None:
    by_stage = stages(dockerfile)
    gateway_install = " ".join(by_stage["gateway-build"])
    assert "[model]" not in gateway_install and "torch" not in gateway_install.replace(
        "find_spec('torch')", ""
    )
    assert "find_spec('torch') is not None" in gateway_install  # the build fails if torch sneaks in
    assert "[model," in " ".join(by_stage["worker"])  # the model stack (and its offline encoders)
    assert "--constraint" in " ".join(by_stage["worker"])  # the base image's CUDA torch stays


def test_no_secrets_are_baked_in(dockerfile: str, repo_root: Path) -> None:
    for instruction in (i for s in stages(dockerfile).values() for i in s):
        keyword = instruction.split()[0].upper()
        if keyword in {"ENV", "ARG"}:
            assert not SECRET_WORDS.search(instruction), instruction
        if keyword in {"COPY", "ADD"}:
            assert ".env" not in instruction, instruction
    dockerignore = (repo_root / ".dockerignore").read_text().splitlines()
    assert dockerignore[dockerignore.index("*") :][0] == "*"  # allow-list: everything else stays out
    allowed = {line[1:] for line in dockerignore if line.startswith("!")}
    packages = {"core/", "fae/", "model/", "service/", "worker/"}
    models = {"models/fae-demo/", "models/fae-demo-turbo/"}
    assert allowed == {"pyproject.toml", "README.md", *packages, *models}
