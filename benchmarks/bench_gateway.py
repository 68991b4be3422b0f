"""The gateway's admission path against a minimal FastAPI app, side by side in one run (issue 13).

Both apps run under the same uvicorn settings against one real redis-server: the gateway (`service.app`, Redis
job store, Celery publishing) and the baseline (`baseline_app` below: validates a similar body, one Redis `SET`
and one `LPUSH`; `GET` is one Redis `GET`). A closed-loop asyncio client on raw HTTP/1.1 keep-alive connections
measures requests/s, p50/p99 and the server's CPU per request, for several concurrencies and repeats:
`POST /v1/generate` on one tenant and spread over 100, `GET /v1/jobs/{id}`, and the in-flight sweep (one
tenant's rate with 0 / 1,000 / 4,000 / 16,000 of its jobs unfinished). Both servers run at once and are
measured in turn, so each gateway point has a baseline point taken next to it; ratios are only meaningful
within one run. `--app-dir` runs the gateway of another checkout, or of several side by side in one run
(`--app-dir /before,/after`: a before/after comparison whose ratios share their baseline points).

    python -m benchmarks.bench_gateway --out /tmp/bench-gateway.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Header, HTTPException, Response

from core.contract import GenerateRequest

REPO = Path(__file__).resolve().parent.parent
TENANTS = 100
BODY = json.dumps({"class_label": 1, "steps": 20, "metadata": {"order": "A-1"}}).encode()
# Unlimited admission: the benchmark measures the path, not the refusals.
LIMITS = {"FAE_RATE_LIMIT_PER_MINUTE": "100000000", "FAE_MAX_INFLIGHT_PER_TENANT": "100000000"}
LIMITS["FAE_MAX_QUEUE_DEPTH"] = "100000000"
SCENARIOS = ["post-1-tenant", "post-100-tenants", "get"]
STACKS = {
    "h11": ["--loop", "asyncio", "--http", "h11"],
    "httptools": ["--loop", "uvloop", "--http", "httptools"],
}


def baseline_app() -> Any:
    """The minimal app: validates a similar body, one `SET` and one `LPUSH`; `GET` reads one key."""
    app = FastAPI()
    client = aioredis.Redis.from_url(os.environ["FAE_REDIS_URL"])

    @app.post("/v1/generate", status_code=202)
    async def generate(body: GenerateRequest, authorization: str = Header()) -> Response:
        job_id = uuid.uuid4().hex
        record = json.dumps({"id": job_id, "status": "queued", "request": body.model_dump(mode="json")})
        await client.set(f"base:job:{job_id}", record)
        await client.lpush("base:queue", job_id)
        return Response(record, status_code=202, media_type="application/json")

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, authorization: str = Header()) -> Response:
        raw = await client.get(f"base:job:{job_id}")
        if raw is None:
            raise HTTPException(404)
        return Response(raw, media_type="application/json")

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_model(root: Path) -> Path:
    """A class-conditional model directory (configs only: the gateway never loads weights)."""
    (root / "generator").mkdir(parents=True)
    (root / "pixel_decoder").mkdir()
    index = {"_class_name": "FAEPipeline", "generator": ["model.x", "LightningDiT"]}
    (root / "model_index.json").write_text(json.dumps(index))
    (root / "generator" / "config.json").write_text(
        json.dumps({"_class_name": "LightningDiT", "num_classes": 10})
    )
    (root / "pixel_decoder" / "config.json").write_text(json.dumps({"grid_size": 8, "patch_size": 4}))
    return root


def wait_http(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def server(
    target: str, env: dict[str, str], stack: str, workers: int, app_dir: Path, log: Path
) -> Iterator[tuple[int, int]]:
    """uvicorn serving `target` (a factory) from `app_dir`; yields its port and pid."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", target, "--port", str(port), *STACKS[stack]]
    command += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    full_env = {**os.environ, **env, "PYTHONPATH": str(app_dir)}
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=full_env, stdout=out, stderr=out, cwd=app_dir)
    try:
        wait_http(port)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's supervisor and its workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for child in children for p in process_tree(int(child)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    app: str
    scenario: str
    concurrency: int
    repeat: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    backlog: int = 0


def request_bytes(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def closed_loop(port: int, requests: list[list[bytes]], duration_s: float) -> tuple[list[float], int]:
    """One connection per list of requests, each sent back-to-back (cycling) until `duration_s` is up."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def connection(mine: list[bytes]) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(mine[i % len(mine)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")):
                errors += 1
            latencies.append(time.perf_counter() - start)
        writer.close()

    await asyncio.gather(*(connection(mine) for mine in requests))
    return latencies, errors


def measure(port: int, pids: list[int], requests: list[list[bytes]], duration_s: float) -> dict[str, Any]:
    asyncio.run(closed_loop(port, requests, min(0.5, duration_s)))  # warm-up
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    latencies, errors = asyncio.run(closed_loop(port, requests, duration_s))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pids) - cpu0
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        "cpu_ms_per_request": 1000 * cpu / max(n, 1),
    }


def keys() -> list[tuple[str, str]]:
    return [(f"t{i:03d}", f"bench-key-{i:03d}-0000") for i in range(TENANTS)]


def post_requests(concurrency: int, spread: bool) -> list[list[bytes]]:
    tenant_keys = [key for _, key in keys()]
    return [
        [
            request_bytes("POST", "/v1/generate", tenant_keys[(c * 7 + j) % TENANTS if spread else 0], BODY)
            for j in range(TENANTS if spread else 1)
        ]
        for c in range(concurrency)
    ]


def job_ids(port: int, count: int) -> list[str]:
    """Jobs to read back: made through the app itself."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port)
    ids = []
    for _ in range(count):
        connection.request(
            "POST",
            "/v1/generate",
            BODY,
            {"Authorization": f"Bearer {keys()[0][1]}", "Content-Type": "application/json"},
        )
        ids.append(json.loads(connection.getresponse().read())["id"])
    return ids


FILL = """
import sys, uuid
from core.contract import Job, JobKind, JobStatus
from core.jobstore import RedisJobStore
from core.jobstore.base import utcnow
from core.settings import get_settings
settings = get_settings()
store = RedisJobStore(settings.redis, settings.limits)
for _ in range(int(sys.argv[1])):
    job = Job(id=uuid.uuid4().hex, kind=JobKind.generate, status=JobStatus.queued, tenant="t000", created_at=utcnow())
    store.create(job)
    store.mark_enqueued(job)
"""


def fill_backlog(env: dict[str, str], app_dir: Path, count: int) -> None:
    """Give tenant t000 `count` more unfinished jobs, through the job store of the gateway under test."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(app_dir)}
    subprocess.run([sys.executable, "-c", FILL, str(count)], env=full_env, check=True, cwd=app_dir)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    points: list[Point] = []
    app_dirs = [Path(d).resolve() for d in args.app_dir.split(",")]
    # One gateway ("gateway"), or several checkouts side by side ("gateway:<folder>"), each next to the baseline.
    names = [d.name for d in app_dirs]
    unique = len(set(names)) == len(names)
    gateways = {
        "gateway" if len(app_dirs) == 1 else f"gateway:{d.name if unique else i}": d
        for i, d in enumerate(app_dirs)
    }
    with redis_server(work) as redis_url:
        import redis

        flush = redis.Redis.from_url(redis_url).flushdb
        env = {
            "FAE_REDIS_URL": redis_url,
            "FAE_API_KEYS": ",".join(f"{t}:{k}" for t, k in keys()),
            "FAE_MODELS": f"bench={write_model(work / 'model')}",
            "FAE_DATA_DIR": str(work / "data"),
            "FAE_GATEWAY_WORKERS": str(args.workers),
            **LIMITS,
        }
        apps = {
            "baseline": ("benchmarks.bench_gateway:baseline_app", REPO),
            **{label: ("service.app:create_app", where) for label, where in gateways.items()},
        }
        for stack in args.stacks.split(","):
            with ExitStack() as servers:
                running: dict[str, tuple[int, list[int]]] = {}
                for app, (target, where) in apps.items():
                    log = work / f"{app}.log"
                    port, pid = servers.enter_context(server(target, env, stack, args.workers, where, log))
                    running[app] = (port, [pid])
                time.sleep(0.5)  # the workers are up
                running = {app: (port, process_tree(pids[0])) for app, (port, pids) in running.items()}
                for repeat in range(args.repeats):
                    # The apps are up together and measured in turn, the order alternating between repeats:
                    # the machine's speed drifting during the run changes them alike, not one of them.
                    order = list(running) if repeat % 2 == 0 else list(reversed(running))
                    for c in args.concurrency:
                        for scenario, spread in (("post-1-tenant", False), ("post-100-tenants", True)):
                            if (spread and c != 32) or scenario not in args.scenarios:
                                continue
                            for app in order:
                                flush()
                                port, pids = running[app]
                                result = measure(port, pids, post_requests(c, spread), args.duration)
                                points.append(Point(f"{app}/{stack}", scenario, c, repeat, **result))
                    if "get" not in args.scenarios:
                        continue
                    for app in order:
                        port, pids = running[app]
                        get = get_requests(job_ids(port, 200))
                        result = measure(port, pids, get, args.duration)
                        points.append(Point(f"{app}/{stack}", "get", 32, repeat, **result))
                for label, where in gateways.items() if args.sweep else ():
                    port, pids = running[label]
                    points += sweep(port, pids, env, where, f"{label}/{stack}", args.duration, flush)
    shutil.rmtree(work, ignore_errors=True)
    return {"points": [asdict(p) for p in points], "summary": summarize(points)}


def get_requests(ids: list[str]) -> list[list[bytes]]:
    """32 connections polling the jobs in `ids`, each in its own order."""
    key = keys()[0][1]
    return [
        [request_bytes("GET", f"/v1/jobs/{ids[(c * 13 + j) % len(ids)]}", key) for j in range(len(ids))]
        for c in range(32)
    ]


def sweep(
    port: int,
    pids: list[int],
    env: dict[str, str],
    app_dir: Path,
    label: str,
    duration_s: float,
    flush: Any,
) -> list[Point]:
    """One tenant's POST rate with 0 / 1,000 / 4,000 / 16,000 of its jobs unfinished."""
    flush()
    points = []
    backlog = 0
    for target_backlog in (0, 1000, 4000, 16000):
        fill_backlog(env, app_dir, target_backlog - backlog)
        backlog = target_backlog
        result = measure(port, pids, post_requests(32, False), duration_s)
        backlog += result["requests"]  # the measured requests stay in flight too
        points.append(Point(label, "inflight-sweep", 32, 0, **result, backlog=target_backlog))
    return points


def summarize(points: list[Point]) -> list[str]:
    """Medians over repeats; each gateway point's ratio is the median of its per-repeat ratios to the baseline
    point measured next to it (same stack, scenario, concurrency and repeat)."""
    groups: dict[tuple[str, str, int, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.app, p.scenario, p.concurrency, p.backlog), []).append(p)
    lines = []
    for (app, scenario, c, backlog), group in sorted(groups.items()):
        rps = statistics.median(p.rps for p in group)
        p99 = statistics.median(p.p99_ms for p in group)
        p50 = statistics.median(p.p50_ms for p in group)
        cpu = statistics.median(p.cpu_ms_per_request for p in group)
        stack = app.split("/")[1]
        base = {p.repeat: p for p in groups.get((f"baseline/{stack}", scenario, c, 0), [])}
        pairs = [
            p.rps / base[p.repeat].rps for p in group if p.repeat in base and p.app != base[p.repeat].app
        ]
        ratio = f" ({statistics.median(pairs):.2f}x baseline)" if pairs else ""
        extra = f" backlog={backlog}" if scenario == "inflight-sweep" else ""
        errors = sum(p.errors for p in group)
        lines.append(
            f"{app:20s} {scenario:17s} c={c:<3d}{extra} {rps:8.0f} req/s{ratio} p50 {p50:6.1f} ms "
            f"p99 {p99:6.1f} ms cpu {cpu:.2f} ms/req errors {errors}"
        )
    return lines


def scenario_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 64])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per point")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--stacks", default="h11,httptools", help="uvicorn HTTP stacks: h11, httptools (uvloop)"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes per app")
    parser.add_argument(
        "--scenarios",
        type=scenario_list,
        default=SCENARIOS,
        help=f"which of {','.join(SCENARIOS)} to run, comma-separated, or '' for none (the sweep is separate: "
        "--no-sweep)",
    )
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the in-flight sweep")
    parser.add_argument(
        "--app-dir",
        default=str(REPO),
        help="the checkout whose gateway runs; several, comma-separated, run side by side (before/after)",
    )
    parser.add_argument("--out", help="write the JSON report here")
    args = parser.parse_args(argv)
    report = run(args)
    report["args"] = {k: v for k, v in vars(args).items()}
    print("\n".join(report["summary"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
