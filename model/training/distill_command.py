"""`fae distill`: a few-step student from a trained teacher (model/training/distill.py). Imports on use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _step_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected step counts like 1,2,4, got {text!r}") from exc
    if not counts:
        raise argparse.ArgumentTypeError("give at least one step count")
    return counts


def add_distill_command(sub: argparse._SubParsersAction) -> None:
    distill = sub.add_parser(
        "distill",
        help="train a few-step student (guidance built in) from a trained text-to-image model",
        description="Teacher pairs (noise → the teacher's guided ODE endpoint) are generated once into "
        "--cache-dir (resumable, keyed by the teacher and settings), then the student, initialised from the "
        "teacher, learns the straight noise→endpoint velocity at the supported step counts' timesteps.",
    )
    distill.add_argument("--teacher", required=True, type=Path, help="the trained model directory")
    distill.add_argument("--out", required=True, type=Path, help="student model directory to write")
    distill.add_argument(
        "--prompts",
        required=True,
        type=Path,
        help="a dataset folder or captions.jsonl (every caption variant), or a text file of prompts",
    )
    distill.add_argument("--steps-supported", type=_step_counts, default=(1, 2, 4), help="e.g. 1,2,4")
    distill.add_argument("--pairs", type=int, default=1024, help="teacher pairs to generate")
    distill.add_argument("--teacher-steps", type=int, default=25, help="teacher Euler steps per pair")
    distill.add_argument("--guidance", type=float, default=4.0, help="the teacher's guidance, built in")
    distill.add_argument("--chunk-size", type=int, default=256, help="pairs per teacher batch and cache file")
    distill.add_argument("--train-steps", type=int, default=1000)
    distill.add_argument("--batch-size", type=int, default=64)
    distill.add_argument("--lr", type=float, default=1e-4)
    distill.add_argument("--ema-decay", type=float, default=0.99)
    distill.add_argument("--checkpoint-every", type=int, default=200)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument(
        "--save-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="generator weights",
    )
    distill.add_argument("--cache-dir", type=Path, help="teacher pair cache (default: OUT.cache beside OUT)")
    distill.add_argument("--no-resume", action="store_true", help="ignore checkpoints in OUT.checkpoints")
    distill.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    distill.add_argument("--json", action="store_true", help="print the training record as JSON")
    distill.set_defaults(handler=distill_command)


def distill_command(args: argparse.Namespace) -> int:
    import torch

    from ..repository import load_pipeline
    from .distill import DistillConfig, distill
    from .teacher_pairs import PairSettings, read_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    config = DistillConfig(
        steps_supported=args.steps_supported,
        pairs=PairSettings(
            count=args.pairs,
            teacher_steps=args.teacher_steps,
            guidance=args.guidance,
            seed=args.seed,
            chunk_size=args.chunk_size,
        ),
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        save_dtype=args.save_dtype,
    )
    teacher = load_pipeline(args.teacher, device="cpu", dtype=torch.float32)
    if teacher.condition_type != "text":
        raise SystemExit("fae distill: the teacher must be a text-to-image model")
    cache_dir = args.cache_dir or args.out.with_name(args.out.name + ".cache")
    record = distill(
        teacher, read_prompts(args.prompts), args.out, config, cache_dir, resume=not args.no_resume
    )
    if args.json:
        print(json.dumps(record, indent=2, default=str))
    else:
        print(
            f"student: loss {record['loss_first_10pct']} -> {record['loss_last_10pct']}; "
            f"pairs {record['pairs_seconds']} s, training {record['train_seconds']} s; wrote {args.out}"
        )
    return 0
