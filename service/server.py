"""Serving the gateway with uvicorn (the `fae serve` process): one process, or several sharing the port.

With `workers` > 1 uvicorn spawns the processes and each builds the production app (`APP_FACTORY`) from the
same environment; they share nothing but Redis, so embedded mode (memory store) runs one. Their Prometheus
samples go to one multi-process directory that this supervisor empties first (a restart starts the counters
over, as one process would), so `/metrics` on any of them reports the sum of all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from starlette.types import ASGIApp

from core.settings import GatewaySettings, ProcessSettings

APP_FACTORY = "service.app:create_app"


def run_server(app: ASGIApp, gateway: GatewaySettings) -> int:
    """Serve `app` in this process."""
    import uvicorn

    uvicorn.run(app, host=gateway.host, port=gateway.port, log_config=None, access_log=False)
    return 0


def run_workers(gateway: GatewaySettings, process: ProcessSettings) -> int:
    """Serve `gateway.workers` processes of the production app, metrics merged across them."""
    import uvicorn

    prepare_metrics_dir(process)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        workers=gateway.workers,
        host=gateway.host,
        port=gateway.port,
        log_config=None,
        access_log=False,
    )
    return 0


def prepare_metrics_dir(process: ProcessSettings) -> Path:
    """The multi-process directory for the gateway's processes, emptied of earlier runs' samples, and set in
    the environment the processes inherit (`FAE_METRICS_DIR`, or a new temporary directory)."""
    from core.metrics import MULTIPROC_ENV

    configured = os.environ.get(MULTIPROC_ENV) or process.metrics_dir
    directory = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="fae-gateway-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["FAE_METRICS_DIR"] = os.environ[MULTIPROC_ENV] = str(directory)
    return directory
