"""A test worker process with test-only engine hooks: `python tests/worker/hooked_worker.py HOOKS_JSON fae-args...`.

Production settings carry no test hooks; the end-to-end tests start their workers through this launcher.
"""

from __future__ import annotations

import json
import sys

from fae.cli import main
from worker.engine import EngineHooks, install_test_hooks

if __name__ == "__main__":
    install_test_hooks(EngineHooks(**json.loads(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
