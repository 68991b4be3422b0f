"""The client is its own distribution: it needs only httpx and pydantic, and imports nothing of the service."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires, version

from packaging.requirements import Requirement

SERVICE_PACKAGES = ("core", "service", "worker", "model", "fae", "torch", "fastapi")


def test_the_distribution_needs_only_httpx_and_pydantic() -> None:
    assert version("fae-client")
    assert {Requirement(r).name for r in requires("fae-client") or []} == {"httpx", "pydantic"}


def test_importing_the_client_loads_nothing_of_the_service() -> None:
    code = (
        "import sys, fae_client, fae_client.cli; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({SERVICE_PACKAGES!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
