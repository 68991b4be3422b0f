"""The model commands of the `fae` CLI: model-info, model-init, generate.

`add_commands` only declares arguments (no torch import), so `fae serve` stays torch-free; each handler
imports what it needs when it runs. Handlers return a process exit code.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

# With --image and no --strength (kept equal to core.contract.DEFAULT_STRENGTH; model/ imports nothing of ours).
DEFAULT_STRENGTH = 0.6


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .preset_configs import PRESETS

    info = sub.add_parser("model-info", help="parameter count of each component of a preset (meta device)")
    info.add_argument("--preset", required=True, choices=sorted(PRESETS))
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=model_info)

    init = sub.add_parser("model-init", help="write a randomly initialised model repository")
    init.add_argument("--preset", required=True, choices=sorted(PRESETS))
    init.add_argument(
        "--out", required=True, type=Path, help="directory to create (must not exist or be empty)"
    )
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--encoder-path", help="Hugging Face directory of the frozen encoder (paper presets)")
    init.add_argument("--text-encoder-path", help="Hugging Face directory of the T5 encoder (paper-t2i)")
    init.set_defaults(handler=model_init)

    gen = sub.add_parser("generate", help="generate images to PNG files, no server needed")
    gen.add_argument("--model", type=Path, help="model directory (default: the embedded default model)")
    cond = gen.add_mutually_exclusive_group(required=True)
    cond.add_argument("--prompt", help="text prompt (text-conditional models)")
    cond.add_argument("--class-label", type=int, help="ImageNet-style class index (class-conditional models)")
    gen.add_argument("--n", type=int, default=1, help="number of images")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    gen.add_argument(
        "--guidance-schedule",
        default="constant",
        choices=["constant", "fae-three-part", "fae-t2i"],
        help="fae-three-part: the paper's ImageNet schedule; fae-t2i: its text-to-image one (the scale for t <= 0.9)",
    )
    gen.add_argument(
        "--guidance-interval",
        dest="guidance_intervals",
        action="append",
        type=_guidance_interval,
        metavar="T_MIN:T_MAX:SCALE",
        help="guidance SCALE for t in [T_MIN, T_MAX] (t = 1 is noise), --guidance elsewhere; repeatable "
        "(instead of --guidance-schedule), e.g. 0.0:0.9:1.5",
    )
    gen.add_argument("--seed", type=int, help="seed of the first image (image i uses seed + i)")
    gen.add_argument("--sampler", default="euler", choices=["euler", "euler_maruyama"])
    gen.add_argument("--adapter", type=Path, help="LoRA adapter directory from `fae finetune`")
    gen.add_argument("--adapter-scale", type=float, default=1.0)
    gen.add_argument("--image", type=Path, help="image-to-image: the input image (PNG, JPEG or WebP)")
    gen.add_argument(
        "--strength",
        type=float,
        help="with --image: where on the noise path it starts (0.6 if omitted; 1 = plain generation, "
        "0 = reconstruction)",
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    gen.add_argument(
        "-o", "--out", type=Path, default=Path("out.png"), help="PNG path; with --n > 1, a suffix _i"
    )
    gen.set_defaults(handler=generate)

    from .training.commands import add_training_commands

    add_training_commands(sub)

    from .training.distill_command import add_distill_command

    add_distill_command(sub)

    from .weights_commands import add_weights_commands

    add_weights_commands(sub)


def model_info(args: argparse.Namespace) -> int:
    from .presets import parameter_counts

    counts = parameter_counts(args.preset)
    if args.json:
        print(json.dumps({"preset": args.preset, "parameters": counts}, indent=2))
    else:
        for name, n in counts.items():
            print(f"{name:18s} {n / 1e6:10.2f}M")
    return 0


def model_init(args: argparse.Namespace) -> int:
    from .io import write_directory_atomically
    from .pipeline import FAEPipeline

    pipe = FAEPipeline.from_preset(
        args.preset, seed=args.seed, encoder_path=args.encoder_path, text_encoder_path=args.text_encoder_path
    )
    write_directory_atomically(args.out, pipe.save_pretrained)
    print(f"wrote a randomly initialised {args.preset!r} model to {args.out}")
    return 0


def generate(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .errors import InvalidInputError
    from .io import write_bytes_atomically
    from .repository import load_pipeline

    if args.strength is not None and args.image is None:
        raise InvalidInputError("--strength needs --image")
    image = _open_image(args.image) if args.image is not None else None
    pipe = load_pipeline(args.model, device=str(resolve_device(args.device)))
    if args.adapter is not None:
        pipe.load_adapter(args.adapter, scale=args.adapter_scale)
    progress = _progress_bar(args.steps)
    out = pipe(
        prompt=args.prompt,
        class_labels=args.class_label,
        num_images=args.n,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_schedule=args.guidance_schedule,
        guidance_intervals=args.guidance_intervals,
        seed=args.seed,
        sampler=args.sampler,
        callback=progress,
        image=image,
        strength=(DEFAULT_STRENGTH if args.strength is None else args.strength) if image is not None else 1.0,
    )
    progress.close()  # type: ignore[attr-defined]
    paths = _output_paths(args.out, len(out.images))
    for path, image, seed in zip(paths, out.images, out.seeds, strict=True):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_bytes_atomically(path, buffer.getvalue())
        print(f"{path}  seed={seed}")
    return 0


def _open_image(path: Path):
    """The input image, its size judged from the header before anything decodes it (model/img2img.py)."""
    import PIL.Image

    from .errors import InvalidInputError
    from .img2img import prepare_input_image

    try:
        with PIL.Image.open(path) as image:
            return prepare_input_image(image)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{path} is not a readable PNG, JPEG or WebP image") from exc


def _guidance_interval(text: str) -> tuple[float, float, float]:
    """`T_MIN:T_MAX:SCALE` → three floats (their bounds are the pipeline's to check)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        t_min, t_max, scale = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected T_MIN:T_MAX:SCALE (three numbers), got {text!r}"
        ) from None
    return t_min, t_max, scale


def _output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(n)]


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr, disable=None)

    def callback(step: int, _total: int) -> bool:
        bar.update(step - bar.n)
        return False

    callback.close = bar.close  # type: ignore[attr-defined]
    return callback
