"""`fae models ...`: model directories as artifacts (manifest, verify, pull from S3, HTTPS or a path).

Registered by `fae/cli.py`; the work is done by `core.manifests` and `worker.model_pull`. Each handler prints
one line a person (or an init container's log) can read, and returns an exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_models_commands(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="model manifests, verification and pulls from object storage")
    verbs = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    manifest = verbs.add_parser("manifest", help="write DIR/fae-manifest.json (every file's SHA-256)")
    manifest.add_argument("directory", type=Path, help="a model directory (model_index.json + components)")
    manifest.add_argument("--version", help="the version label to record (e.g. 2 or 2026-12-01)")
    manifest.set_defaults(handler=manifest_command)

    verify = verbs.add_parser("verify", help="check every file of DIR against its manifest")
    verify.add_argument("directory", type=Path)
    verify.set_defaults(handler=verify_command)

    pull = verbs.add_parser(
        "pull",
        help="download a model (s3://bucket/prefix, https://..., or a path), verify it, move it into place",
    )
    pull.add_argument("source", nargs="?", help="where the model is (default FAE_MODEL_SOURCE)")
    pull.add_argument(
        "--into", required=True, type=Path, help="the model directory to create, e.g. /models/fae-2"
    )
    pull.add_argument("--expect-fingerprint", help="refuse a source whose manifest has another fingerprint")
    pull.add_argument(
        "--verify-existing",
        action="store_true",
        help="when DIR is already there, re-check its files' SHA-256",
    )
    pull.add_argument("--replace", action="store_true", help="replace DIR if it holds another model")
    pull.set_defaults(handler=pull_command)


def manifest_command(args: argparse.Namespace) -> int:
    from core.manifests import MANIFEST_NAME, write_manifest

    written = write_manifest(args.directory, args.version)
    print(
        f"wrote {args.directory / MANIFEST_NAME}: {len(written.files)} files, {written.total_bytes} bytes, "
        f"version {written.version or '-'}, fingerprint {written.fingerprint}"
    )
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from core.manifests import verify_directory

    checked = verify_directory(args.directory)
    print(f"{args.directory}: {len(checked.files)} files match, fingerprint {checked.fingerprint}")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from worker.model_pull import open_source, pull_model

    settings = get_settings()
    source = args.source or settings.catalog.model_source
    if not source:
        raise ValueError("no model source: give SOURCE or set FAE_MODEL_SOURCE")
    try:
        result = pull_model(
            open_source(source, settings),
            args.into,
            expect_fingerprint=args.expect_fingerprint,
            verify_existing=args.verify_existing,
            replace=args.replace,
        )
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError):
        raise  # already one clear line
    except (
        Exception
    ) as exc:  # network, S3 refusals (credentials, bucket), HTTP errors: one line, not a traceback
        if not _is_transfer_error(exc):
            raise
        raise ValueError(
            f"could not read {source}: {type(exc).__name__}: {exc} (run the pull again: it resumes)"
        ) from exc
    manifest = result.manifest
    verb = "already present, unchanged" if result.status == "present" else "pulled and verified"
    print(
        f"{result.target}: {verb} ({len(manifest.files)} files, {manifest.total_bytes} bytes, "
        f"{result.downloaded_bytes} downloaded, {result.reused_files} reused from an earlier attempt), "
        f"version {manifest.version or '-'}, fingerprint {manifest.fingerprint}"
    )
    return 0


def _is_transfer_error(exc: BaseException) -> bool:
    import httpx
    from botocore.exceptions import BotoCoreError, ClientError

    from core.storage import StorageUnavailable

    return isinstance(exc, OSError | httpx.HTTPError | BotoCoreError | ClientError | StorageUnavailable)
