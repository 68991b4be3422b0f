"""`fae`: the one console script, and the composition root that wires gateway, worker and model together.

- `fae serve [--embedded]`: the gateway (embedded: with an in-process worker, memory job store, local storage);
- `fae worker`: a Celery GPU worker; `fae reaper`: the lease reaper on its own;
- `fae verify IMAGE...`: an image's Content Credentials and watermark, offline (fae/verify.py);
- model commands (`model-info`, `model-init`, `generate`, `train`, `finetune`): see model/commands.py.
- `fae models manifest|verify|pull`: model directories as verified artifacts (fae/models_command.py).
- `fae remote ...`: a remote server's API through the client package (`fae-client`, clients/python).

Subcommands import their heavy parts only when they run: `fae serve` never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

# Exceptions whose message is written for the user: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fae", description="FAE image generation service and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP gateway")
    serve.add_argument(
        "--embedded", action="store_true", help="in-process worker, local storage, no Redis/S3"
    )
    serve.add_argument("--host", help="bind address (default FAE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FAE_PORT or 8000)")
    serve.add_argument(
        "--workers", type=int, help="gateway processes sharing the port (default FAE_GATEWAY_WORKERS or 1)"
    )
    serve.set_defaults(handler=serve_command)

    worker = sub.add_parser("worker", help="run a Celery worker (one per GPU)")
    worker.add_argument("--queues", help="comma-separated queues (default FAE_WORKER_QUEUES)")
    worker.set_defaults(handler=worker_command)

    reaper = sub.add_parser("reaper", help="requeue jobs whose worker died (every worker also runs one)")
    reaper.add_argument("--once", action="store_true", help="one pass, then exit")
    reaper.set_defaults(handler=reaper_command)

    # Listed for --help only: main() hands `fae remote ...` to the client before parsing.
    sub.add_parser("remote", help="call a running server's API (the fae-client command; clients/python)")

    from fae.verify import add_command as add_verify

    add_verify(sub)

    from model.commands import add_commands

    add_commands(sub)
    from fae.models_command import add_models_commands

    add_models_commands(sub)
    return parser


def serve_command(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from service.server import run_server, run_workers

    settings = get_settings()
    given = (("host", args.host), ("port", args.port), ("gateway_workers", args.workers))
    changes = {name: value for name, value in given if value}
    if changes:
        settings = settings.override(**changes)
    if settings.gateway.workers > 1:
        if args.embedded:
            raise ValueError("embedded mode keeps its jobs in memory: it runs one process (drop --workers)")
        return run_workers(settings.gateway, settings.process)
    if not args.embedded:
        from service.app import create_app

        return run_server(create_app(settings), settings.gateway)
    from fae.starting import StartingApp

    def build() -> FastAPI:  # in StartingApp's thread: the port answers /healthz meanwhile
        from fae.embedded import build_embedded

        return build_embedded(settings)

    return run_server(StartingApp(build), settings.gateway)


def worker_command(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from worker.main import run_worker

    settings = get_settings()
    queues = args.queues or settings.worker.queues
    return run_worker(settings, [q.strip() for q in queues.split(",") if q.strip()]) or 0


def reaper_command(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from worker.main import run_reaper

    return run_reaper(get_settings(), once=args.once)


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; a user error is one clear line on stderr and exit code 2, not a traceback."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"fae {args.command}: error: {exc}", file=sys.stderr)
        return 2


def remote_command(argv: Sequence[str]) -> int:
    """`fae remote ...`: the API client's command (`fae-client`, from clients/python), when it is installed."""
    try:
        from fae_client.cli import main as client_main
    except ImportError:
        print("fae remote: the client is not installed: pip install -e clients/python", file=sys.stderr)
        return 2
    return client_main(argv, prog="fae remote")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["remote"]:  # handed over whole: the client parses its own arguments
        return remote_command(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
