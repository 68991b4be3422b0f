"""`fae-client`: the API from a shell (also `fae remote ...` where the service is installed).

    fae-client generate --prompt "red apple" -o apple.png
    fae-client jobs list | get ID | cancel ID | wait ID | events ID | delete ID
    fae-client finetune create DIR [--steps N] [--wait]
    fae-client adapters list | get ID | delete ID | download ID -o adapter.zip
    fae-client models

`--base-url` / `--api-key` (anywhere on the line) or `FAE_BASE_URL` / `FAE_API_KEY`. Results print as JSON on
stdout; errors as one line on stderr (exit 1; 2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fae_client.client import FAEClient, save_images, write_file
from fae_client.errors import APIError, FAEError


def _print(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    elif isinstance(value, list):
        value = [v.model_dump(mode="json", by_alias=True, exclude_none=True) for v in value]
    print(json.dumps(value, indent=2))


def _upload_progress(sent: int, total: int) -> None:
    if total and sys.stderr.isatty():
        print(
            f"\ruploading {100 * sent // total:3d}% ({sent / 1e6:.1f} of {total / 1e6:.1f} MB)",
            end="",
            file=sys.stderr,
        )
        if sent == total:
            print(file=sys.stderr)


def cmd_generate(fae: FAEClient, args: argparse.Namespace) -> int:
    wait = args.wait if args.wait > 0 else False
    job = fae.generate(
        args.prompt,
        class_label=args.class_label,
        model=args.model,
        n=args.n,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        adapter=args.adapter,
        adapter_scale=args.adapter_scale,
        output_format=args.output_format,
        image=args.image,
        strength=args.strength,
        wait=wait,
    )
    if args.output and job.done:
        for path in save_images(fae.images(job), args.output):
            print(f"wrote {path}", file=sys.stderr)
    elif args.output:
        print(f"job {job.id} is still {job.status}: `fae-client jobs wait {job.id}`", file=sys.stderr)
    _print(job)
    return 0 if job.status in ("succeeded", "queued", "running") else 1


def cmd_jobs(fae: FAEClient, args: argparse.Namespace) -> int:
    match args.action:
        case "get":
            _print(fae.jobs.get(args.id))
        case "list":
            _print(fae.jobs.list(limit=args.limit, cursor=args.cursor, kind=args.kind))
        case "cancel":
            _print(fae.jobs.cancel(args.id))
        case "wait":
            job = fae.jobs.wait(args.id, timeout=args.timeout)
            _print(job)
            return 0 if job.succeeded else 1
        case "events":
            for event in fae.jobs.stream(args.id):
                print(json.dumps({"event": event.event, "id": event.id, "data": event.data}), flush=True)
        case "delete":
            fae.jobs.delete(args.id)
    return 0


def cmd_finetune(fae: FAEClient, args: argparse.Namespace) -> int:
    if args.action == "get":
        _print(fae.finetunes.get(args.id))
        return 0
    job = fae.finetunes.create(
        args.dataset,
        model=args.model,
        name=args.name,
        steps=args.steps,
        rank=args.rank,
        learning_rate=args.learning_rate,
        trigger_phrase=args.trigger_phrase,
        progress=_upload_progress,
    )
    if args.wait:
        job = fae.finetunes.wait(job.id)
    _print(job)
    return 1 if job.status in ("failed", "canceled") else 0


def cmd_adapters(fae: FAEClient, args: argparse.Namespace) -> int:
    match args.action:
        case "list":
            _print(fae.adapters.list())
        case "get":
            _print(fae.adapters.get(args.id))
        case "delete":
            fae.adapters.delete(args.id)
        case "download":
            out = Path(args.output or f"{args.id}.zip")
            write_file(out, fae.adapters.download(args.id))
            print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_models(fae: FAEClient, args: argparse.Namespace) -> int:
    _print(fae.models.list())
    return 0


def build_parser(prog: str = "fae-client") -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--base-url", default=argparse.SUPPRESS, help="default FAE_BASE_URL or http://127.0.0.1:8000"
    )
    connection.add_argument("--api-key", default=argparse.SUPPRESS, help="default FAE_API_KEY")
    connection.add_argument(
        "--request-timeout", type=float, default=argparse.SUPPRESS, help="seconds per HTTP request (60)"
    )
    parser = argparse.ArgumentParser(prog=prog, description="fae-serve API client", parents=[connection])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", parents=[connection], help="generate images (waits, then saves them)")
    condition = gen.add_mutually_exclusive_group(required=True)
    condition.add_argument("--prompt")
    condition.add_argument("--class-label", type=int)
    gen.add_argument("--model")
    gen.add_argument("-n", type=int)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance-scale", type=float)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--negative-prompt")
    gen.add_argument("--adapter")
    gen.add_argument("--adapter-scale", type=float)
    gen.add_argument("--output-format", choices=["png", "webp", "jpeg"])
    gen.add_argument(
        "--image", help="image-to-image: an image file, or a key under your tenants/<tenant>/ prefix"
    )
    gen.add_argument(
        "--strength", type=float, help="with --image: 0 (reconstruction) to 1 (plain generation)"
    )
    gen.add_argument(
        "--wait", type=float, default=300.0, help="seconds to wait for the images (0: do not wait)"
    )
    gen.add_argument("-o", "--output", help="write the image here (several: NAME-0.png, NAME-1.png, ...)")
    gen.set_defaults(handler=cmd_generate)

    jobs = sub.add_parser("jobs", parents=[connection], help="read, list, cancel, wait for and follow jobs")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[connection], help="the newest jobs")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--cursor")
    listing.add_argument("--kind", choices=["generate", "finetune"])
    for name, text in [("get", "a job"), ("cancel", "cancel a job"), ("events", "follow a job's events"),
                       ("delete", "delete a finished job")]:  # fmt: skip
        actions.add_parser(name, parents=[connection], help=text).add_argument("id")
    wait = actions.add_parser("wait", parents=[connection], help="wait until a job is done")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float)
    jobs.set_defaults(handler=cmd_jobs)

    finetune = sub.add_parser("finetune", parents=[connection], help="start or read a fine-tune")
    actions = finetune.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[connection], help="upload DATASET (a directory or a zip)")
    create.add_argument("dataset", help="a directory of images (and .txt captions), or a zip")
    create.add_argument("--model")
    create.add_argument("--name")
    create.add_argument("--steps", type=int)
    create.add_argument("--rank", type=int)
    create.add_argument("--learning-rate", type=float)
    create.add_argument("--trigger-phrase")
    create.add_argument("--wait", action="store_true", help="wait until the adapter is trained")
    actions.add_parser("get", parents=[connection], help="a fine-tune").add_argument("id")
    finetune.set_defaults(handler=cmd_finetune)

    adapters = sub.add_parser("adapters", parents=[connection], help="list, read, delete, download adapters")
    actions = adapters.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[connection], help="your adapters")
    for name, text in [("get", "an adapter"), ("delete", "delete an adapter")]:
        actions.add_parser(name, parents=[connection], help=text).add_argument("id")
    download = actions.add_parser("download", parents=[connection], help="the adapter as a peft zip")
    download.add_argument("id")
    download.add_argument("-o", "--output", help="default ID.zip")
    adapters.set_defaults(handler=cmd_adapters)

    sub.add_parser("models", parents=[connection], help="the models on offer").set_defaults(
        handler=cmd_models
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "fae-client") -> int:
    args = build_parser(prog).parse_args(argv)
    options = vars(args)
    try:
        with FAEClient(
            options.get("base_url"), options.get("api_key"), timeout=options.get("request_timeout", 60.0)
        ) as fae:
            return args.handler(fae, args)
    except APIError as exc:
        request = f" (request {exc.request_id})" if exc.request_id else ""
        print(f"{prog}: error: {exc}{request}", file=sys.stderr)
        for error in exc.errors:
            print(f"  {'.'.join(map(str, error.get('loc', [])))}: {error.get('msg')}", file=sys.stderr)
        return 1
    except (FAEError, OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
