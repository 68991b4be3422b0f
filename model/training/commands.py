"""`fae train` and `fae finetune`. Declaring the arguments imports nothing heavy; handlers import on use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STAGE_CHOICES = ("ia", "ib", "ib-recon", "ii", "all")


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train FAE stages on a folder (or zip) of images and write a model directory",
        description="Stages: ia (compressor + feature decoder), ib (pixel decoder on noisy features), ib-recon "
        "(pixel decoder on reconstructed features), ii (the generator), all (each in turn).",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="start from a new randomly initialised model of this preset")
    source.add_argument("--model", type=Path, help="start from this model directory")
    train.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder or .zip of images (captions optional), or a folder of tar shards from `fae pack-shards`",
    )
    train.add_argument(
        "--out", required=True, type=Path, help="model directory to write (rewritten per stage)"
    )
    train.add_argument("--stage", default="all", choices=STAGE_CHOICES)
    train.add_argument("--steps", type=int, default=1000, help="steps per stage")
    train.add_argument("--recon-steps", type=int, help="ib-recon steps within --stage all (default steps/4)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=500)
    train.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the work dir"
    )
    train.add_argument("--work-dir", type=Path, help="checkpoints and caches (default: OUT.work beside OUT)")
    train.add_argument("--cache-dir", type=Path, help="feature/latent cache, shareable between runs")
    train.add_argument("--kl-weight", type=float, default=1e-4, help="stage Ia: β, per latent element")
    train.add_argument("--noise-sigma", type=float, default=0.4, help="stage Ib: feature noise σ")
    train.add_argument(
        "--noise-scale",
        choices=["absolute", "token-rms"],
        help="stage Ib: σ absolute (the paper's, for DINOv2) or times each token's RMS "
        "(default: absolute for the paper presets, token-rms otherwise)",
    )
    train.add_argument("--perceptual-weight", type=float, default=1.0)
    train.add_argument(
        "--adversarial-weight",
        type=float,
        help="stages Ib/ib-recon hinge-GAN term, times the adaptive weight (0 = off; default: 0.75 for a new "
        "paper or demo model, else off)",
    )
    train.add_argument(
        "--adversarial-start", type=int, help="step at which the GAN term starts (default: half the steps)"
    )
    train.add_argument(
        "--discriminator",
        default="encoder",
        choices=["encoder", "patch"],
        help="encoder: a head on the frozen encoder's features; patch: a pixel PatchGAN",
    )
    train.add_argument(
        "--feature-source",
        default="auto",
        choices=["auto", "cache", "stream"],
        help="stages I on shards: cache the encoder's features, or stream the shards and run the encoder online; "
        "auto streams when the cache would pass --cache-budget-gb",
    )
    train.add_argument("--cache-budget-gb", type=float, default=200.0, help="the feature cache's size budget")
    train.add_argument("--prefetch", type=int, default=4, help="streamed batches read ahead")
    train.add_argument("--ema-decay", type=float, default=0.9999, help="stage II")
    train.add_argument("--condition-dropout", type=float, default=0.1, help="stage II, for guidance")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--json", action="store_true", help="print the report as JSON")
    train.set_defaults(handler=train_command)

    pack = sub.add_parser(
        "pack-shards",
        help="pack a folder of images (captions, labels) into tar shards that `fae train --data` streams",
    )
    pack.add_argument("--images", required=True, type=Path, help="the dataset folder")
    pack.add_argument(
        "--out", required=True, type=Path, help="folder to create for the shards and index.json"
    )
    pack.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    pack.set_defaults(handler=pack_shards_command)

    finetune = sub.add_parser("finetune", help="fine-tune a LoRA adapter on 10-1000 brand images")
    finetune.add_argument("--base", required=True, type=Path, help="the base model directory")
    finetune.add_argument(
        "--images", required=True, type=Path, help="folder or .zip of images (captions optional)"
    )
    finetune.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    finetune.add_argument("--steps", type=int, default=500)
    finetune.add_argument("--rank", type=int, default=8)
    finetune.add_argument("--lr", type=float, default=1e-4)
    finetune.add_argument("--trigger", help="phrase prepended to every caption (text-conditional bases)")
    finetune.add_argument(
        "--class-label",
        type=int,
        help="class-conditional bases: train under this label "
        "(default: a random label per sample, so the adapter applies to every class)",
    )
    finetune.add_argument("--batch-size", type=int, default=8)
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--checkpoint-every", type=int, default=100)
    finetune.add_argument(
        "--work-dir", type=Path, help="checkpoints and cache (default: OUT.work beside OUT)"
    )
    finetune.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    finetune.add_argument("--json", action="store_true", help="print the report as JSON")
    finetune.set_defaults(handler=finetune_command)


def train_command(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .runner import train

    config = TrainConfig(
        steps=args.steps,
        recon_steps=args.recon_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        kl_weight=args.kl_weight,
        noise_sigma=args.noise_sigma,
        noise_scale=args.noise_scale,
        perceptual_weight=args.perceptual_weight,
        adversarial_weight=args.adversarial_weight,
        adversarial_start=args.adversarial_start,
        discriminator=args.discriminator,
        ema_decay=args.ema_decay,
        condition_dropout=args.condition_dropout,
        feature_source=args.feature_source,
        feature_cache_budget_gb=args.cache_budget_gb,
        prefetch_batches=args.prefetch,
    )
    report = train(
        data=args.data,
        out_dir=args.out,
        preset=args.preset,
        model_dir=args.model,
        stage=args.stage,
        config=config,
        work_dir=args.work_dir,
        cache_dir=args.cache_dir,
        resume=args.resume,
        device=args.device,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        dataset = report["dataset"]
        print(f"dataset: {dataset['num_images']} images, {dataset['num_skipped']} skipped")
        for name, stage in report["stages"].items():
            if stage["resumed_from_step"] == stage["steps"]:  # resumed at its last checkpoint
                print(f"stage {name}: already complete ({stage['steps']} steps), model rewritten")
                continue
            print(
                f"stage {name}: loss {stage['loss_start']:.4f} -> {stage['loss_end']:.4f} "
                f"({stage['steps']} steps, {stage['images_per_s']:.0f} images/s"
                + (f", features: {stage['feature_source']})" if "feature_source" in stage else ")")
            )
        print(f"wrote the model to {report['out_dir']}")
    return 0


def pack_shards_command(args: argparse.Namespace) -> int:
    from ..shards import pack_shards

    dataset = pack_shards(args.images, args.out, images_per_shard=args.shard_size)
    print(f"packed {len(dataset)} images into {len(dataset.shards)} shards in {args.out}")
    return 0


def finetune_command(args: argparse.Namespace) -> int:
    from .lora import run_finetune

    report = run_finetune(
        base_dir=args.base,
        images_dir=args.images,
        out_dir=args.out,
        steps=args.steps,
        rank=args.rank,
        learning_rate=args.lr,
        trigger_phrase=args.trigger,
        class_label=args.class_label,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        work_dir=args.work_dir,
        device=args.device,
        show_progress=None,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        dataset = report["dataset"]
        print(f"dataset: {dataset['num_images']} images, {dataset['num_skipped']} skipped")
        for skipped in dataset["skipped"]:
            print(f"  skipped {skipped['file']}: {skipped['reason']}")
        print(f"loss {report['loss_start']:.4f} -> {report['loss_end']:.4f} over {report['steps']} steps")
        print(f"wrote the adapter ({report['adapter_bytes'] / 1e6:.2f} MB) to {report['adapter_dir']}")
    return 0
