"""`helm test` checks, run by the gateway image: `ready` (the gateway answers /readyz) and `generate` (one
generate job through the gateway, Redis, a GPU worker and object storage, waited for until it succeeds).

Environment: FAE_TEST_GATEWAY_URL (the gateway Service), FAE_API_KEYS_FILE (the release's API keys; the first
entry with the generate scope is used; absent when the gateway runs without keys), FAE_TEST_STEPS,
FAE_TEST_TIMEOUT_S. Prints one line saying what was checked; exits 1 with the reason when a check fails.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from service.auth import parse_entries

TERMINAL = {"succeeded", "failed", "canceled"}


def api_key() -> str | None:
    path = os.environ.get("FAE_API_KEYS_FILE")
    if not path or not Path(path).is_file():
        return None
    for _, key, scopes in parse_entries(Path(path).read_text(), path):
        if "generate" in scopes:
            return key
    raise SystemExit(f"{path} has no API key with the generate scope: add one to run the round trip")


def check_ready(client: httpx.Client) -> str:
    response = client.get("/readyz")
    if response.status_code != 200:
        raise SystemExit(
            f"gateway not ready: GET /readyz answered {response.status_code}: {response.text[:300]}"
        )
    return "gateway ready"


def check_generate(client: httpx.Client, steps: int, timeout_s: float) -> str:
    models = client.get("/v1/models").raise_for_status().json()["data"]
    default = next((m for m in models if m["default"]), None)
    if default is None:
        raise SystemExit(f"no default model among {[m['name'] for m in models]}")
    body: dict[str, object] = {"steps": steps, "seed": 0}
    if default["condition_type"] == "class":
        body["class_label"] = 0
    else:
        body["prompt"] = "a red apple on a table"
    started = time.monotonic()
    job = (
        client.post("/v1/generate", json=body, headers={"Prefer": "respond-async"}).raise_for_status().json()
    )
    while job["status"] not in TERMINAL:
        if time.monotonic() - started > timeout_s:
            raise SystemExit(
                f"job {job['id']} still {job['status']} after {timeout_s:g} s: is a worker ready?"
            )
        time.sleep(2)
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    if job["status"] != "succeeded" or not job["outputs"]:
        raise SystemExit(f"job {job['id']} {job['status']}: {job.get('error')}")
    return (
        f"generate round trip: job {job['id']} made {len(job['outputs'])} image(s) with {job['model']} "
        f"(version {job.get('model_version')}, fingerprint {job.get('model_fingerprint')}) "
        f"in {time.monotonic() - started:.1f} s"
    )


def main(argv: list[str]) -> int:
    check = argv[1] if len(argv) > 1 else "generate"
    key = api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=os.environ["FAE_TEST_GATEWAY_URL"], headers=headers, timeout=30) as client:
        if check == "ready":
            print(check_ready(client))
        else:
            steps = int(os.environ.get("FAE_TEST_STEPS", "2"))
            print(check_generate(client, steps, float(os.environ.get("FAE_TEST_TIMEOUT_S", "600"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
