"""Serving a gateway app with uvicorn (the `fae serve` process)."""

from __future__ import annotations

from fastapi import FastAPI

from core.settings import GatewaySettings


def run_server(app: FastAPI, gateway: GatewaySettings) -> int:
    import uvicorn

    uvicorn.run(app, host=gateway.host, port=gateway.port, log_config=None, access_log=False)
    return 0
