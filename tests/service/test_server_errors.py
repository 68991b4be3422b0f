"""A 500 over a real uvicorn server on loopback: a problem body, and the keep-alive connection stays usable."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import uvicorn


def test_a_500_keeps_the_connection_alive(make_gateway) -> None:
    gw = make_gateway()

    def broken() -> None:
        raise RuntimeError("a bug")

    gw.client.app.add_api_route("/v1/broken", broken)  # a route with a bug, whatever the store does
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(gw.client.app, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(3):  # the same connection each time: a closed one raises here
            connection.request("GET", "/v1/broken")
            response = connection.getresponse()
            body = json.loads(response.read())
            assert response.status == 500 and body["type"].endswith("internal") and body["request_id"]
            assert response.getheader("content-type").startswith("application/problem+json")
            assert (response.getheader("connection") or "").lower() != "close"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
