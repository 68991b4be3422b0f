"""The worker's own small HTTP server: ``/healthz`` (alive), ``/readyz`` (model warm, Redis up), ``/metrics``.

It runs in a daemon thread beside the Celery consumer and answers from the moment the process starts, so
Kubernetes sees a live-but-not-ready worker while the model loads and warms.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core import metrics

log = logging.getLogger(__name__)

# () -> (ready, details): details say what is missing while not ready.
ReadinessCheck = Callable[[], tuple[bool, dict[str, object]]]


class WorkerHTTPServer:
    def __init__(self, host: str, port: int, readiness: ReadinessCheck) -> None:
        self._readiness = readiness
        handler = _make_handler(readiness)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fae-worker-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> WorkerHTTPServer:
        self._thread.start()
        log.info("worker HTTP server listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(readiness: ReadinessCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fae-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send_json(200, {"status": "ok"})
            elif path == "/readyz":
                try:
                    ready, details = readiness()
                except Exception as exc:
                    ready, details = False, {"error": type(exc).__name__}
                self._send_json(
                    200 if ready else 503, {"status": "ready" if ready else "not ready", **details}
                )
            elif path == "/metrics":
                body, content_type = metrics.render_latest()
                self._send(200, body, content_type)
            else:
                self._send_json(404, {"status": 404, "title": "Not Found", "detail": f"no route {path}"})

        def _send_json(self, status: int, payload: dict[str, object]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes are not worth a log line each
            return

    return Handler
