"""`fae`: the one console script. Subcommands import their heavy parts only when they run.

- `fae serve [--embedded]`: the gateway (embedded: with an in-process worker, memory job store, local storage);
- `fae worker`: a Celery GPU worker; `fae reaper`: the lease reaper on its own;
- model commands (`model-info`, `model-init`, `generate`, `train`, `finetune`): see model/cli.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors_cli import run_handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fae", description="FAE image generation service and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument(
        "--embedded", action="store_true", help="in-process worker, local storage, no Redis/S3"
    )
    serve.add_argument("--host", help="bind address (default FAE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FAE_PORT or 8000)")
    serve.set_defaults(handler=serve_command)

    worker = sub.add_parser("worker", help="run a Celery worker (one per GPU)")
    worker.add_argument("--queues", help="comma-separated queues (default FAE_WORKER_QUEUES)")
    worker.set_defaults(handler=worker_command)

    reaper = sub.add_parser("reaper", help="requeue jobs whose worker died (every worker also runs one)")
    reaper.add_argument("--once", action="store_true", help="one pass, then exit")
    reaper.set_defaults(handler=reaper_command)

    from model.cli import add_commands

    add_commands(sub)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    from .server import run_server
    from .settings import get_settings

    settings = get_settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    return run_server(settings, embedded=args.embedded)


def worker_command(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    from .settings import get_settings

    settings = get_settings()
    queues = args.queues or settings.worker_queues
    return run_worker(settings, [q.strip() for q in queues.split(",") if q.strip()]) or 0


def reaper_command(args: argparse.Namespace) -> int:
    from worker.main import run_reaper

    from .settings import get_settings

    return run_reaper(get_settings(), once=args.once)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
