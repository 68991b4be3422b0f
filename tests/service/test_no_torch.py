"""The gateway process never imports torch (it must start fast and fit a CPU-only image)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
from service.app import create_app
from core.settings import Settings
app = create_app(Settings().override(api_keys="acme:acme-key-0001", data_dir=sys.argv[1]))
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "model", "worker") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_gateway_imports_no_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "clean"


_CLI_PROBE = """
import sys
from fae.cli import build_parser
args = build_parser().parse_args(["serve", "--port", "8123"])
assert args.handler.__name__ == "serve_command"
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "worker") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_fae_serve_command_line_imports_no_torch() -> None:
    """`fae serve` builds the whole CLI (model commands included) before it starts the gateway."""
    result = subprocess.run(
        [sys.executable, "-c", _CLI_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "clean"
