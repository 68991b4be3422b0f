"""The package boundaries of docs/architecture.md hold, and `lint-imports` (run by `make lint`) catches a
forbidden import: a copy of the packages with one added gateway → worker import fails the contracts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "fae", "model", "service", "worker")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(binary), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The five packages and pyproject.toml, copied (no caches), where a test may change them."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_repository_keeps_its_import_contracts(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_gateway_module_importing_the_worker_breaks_the_contracts(tree_copy: Path) -> None:
    health = tree_copy / "service" / "routes" / "health.py"
    health.write_text(
        health.read_text() + "\n\ndef _forbidden() -> None:\n    import worker.runtime  # noqa: F401\n"
    )
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert "the gateway imports only core" in result.stdout and "BROKEN" in result.stdout
    assert "service.routes.health -> worker.runtime" in result.stdout


def test_the_model_stack_importing_core_breaks_the_contracts(tree_copy: Path) -> None:
    scheduling = tree_copy / "model" / "scheduling.py"
    scheduling.write_text(
        scheduling.read_text() + "\nfrom core.contract import MAX_STEPS as _M  # noqa: E402,F401\n"
    )
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    assert "the model stack imports nothing of ours" in result.stdout
