"""Turning exceptions at the CLI's edge into one clear line on stderr and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Exceptions whose message is written for the user: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
)


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"fae {args.command}: error: {exc}", file=sys.stderr)
        return 2
