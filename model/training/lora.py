"""Brand fine-tunes: a LoRA adapter on the generator's attention and MLP projections from 10-1000 images.

Conditions:
- text-conditional bases: each image's caption (sidecar or manifest), with the trigger phrase prepended; an
  image without a caption trains on the trigger phrase alone (or the empty prompt when there is none);
- class-conditional bases have no text to carry a trigger phrase: with `class_label` the images train under
  that label, and without one (the default, and what the service does) each sample gets a uniformly random
  label, so the adapter restyles whatever class a caller generates. Either way 10% of samples train on the
  null condition, so classifier-free guidance keeps working with the adapter.

The latents of the images (and their flips) come from the base's own encoder and compressor, cached on disk;
the base's latent statistics are kept. Checkpoints go to `work_dir` and a re-run with the same settings
resumes from them (a re-delivered job loses at most one checkpoint interval); the adapter directory is
written atomically at the end.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..adapters import check_adapter_destination, inject, lora_config, lora_layers, save_adapter, strip_lora
from ..data import open_image_dataset
from ..devices import resolve_device
from ..errors import InvalidInputError
from ..fingerprint import module_fingerprint
from ..latent_cache import LatentCache
from ..pipeline import FAEPipeline
from .config import TrainConfig
from .generator import ClassConditions, GeneratorTask, TextConditions
from .progress import CancelCheck, TrainingProgressCallback
from .train_loop import LoopOptions, derive_seed, run_loop

# Kept equal to core.contract.FINETUNE_MIN_IMAGES and FINETUNE_MAX_IMAGES (the gateway refuses other datasets).
FINETUNE_MIN_IMAGES = 10
FINETUNE_MAX_IMAGES = 1000
FINETUNE_MAX_STEPS = (
    20_000  # Kept equal to core.contract.FINETUNE_MAX_STEPS (tests/architecture/test_limits.py checks).
)
FINETUNE_MAX_RANK = (
    128  # Kept equal to core.contract.FINETUNE_MAX_RANK (tests/architecture/test_limits.py checks).
)
MAX_TRIGGER_CHARS = 200
ADAPTER_NAME = "finetune"


def _check_settings(
    steps: int, rank: int, learning_rate: float, trigger_phrase: str | None, batch_size: int
) -> None:
    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(steps) or not 1 <= steps <= FINETUNE_MAX_STEPS:
        raise InvalidInputError(f"steps must be an integer from 1 to {FINETUNE_MAX_STEPS}, got {steps!r}")
    if not is_int(rank) or not 1 <= rank <= FINETUNE_MAX_RANK:
        raise InvalidInputError(f"rank must be an integer from 1 to {FINETUNE_MAX_RANK}, got {rank!r}")
    if not isinstance(learning_rate, (int, float)) or not 0 < learning_rate <= 1:
        raise InvalidInputError(f"learning_rate must be in (0, 1], got {learning_rate!r}")
    if trigger_phrase is not None and (
        not isinstance(trigger_phrase, str) or len(trigger_phrase) > MAX_TRIGGER_CHARS
    ):
        raise InvalidInputError(f"trigger_phrase must be a string of at most {MAX_TRIGGER_CHARS} characters")
    if not is_int(batch_size) or not 1 <= batch_size <= 256:
        raise InvalidInputError(f"batch_size must be an integer from 1 to 256, got {batch_size!r}")


def _base(
    base_dir: Path | str | None, pipeline: FAEPipeline | None, device: str | None
) -> tuple[FAEPipeline, Any]:
    """The base pipeline and the generator to train (a clean copy when the pipeline is shared)."""
    if (base_dir is None) == (pipeline is None):
        raise InvalidInputError("give exactly one of base_dir (a model directory) or pipeline (a loaded one)")
    if pipeline is None:
        from ..repository import load_pipeline

        pipeline = load_pipeline(Path(base_dir), device=str(resolve_device(device)))
        generator = strip_lora(pipeline.generator)
    else:
        # The caller's pipeline keeps serving: train a copy of its generator, without cached adapters.
        generator = strip_lora(copy.deepcopy(pipeline.generator))
    if pipeline.encoder is None or pipeline.compressor is None:
        raise InvalidInputError(
            "the base model has no frozen encoder or compressor, so it cannot encode images"
        )
    return pipeline, generator


def _class_conditions(pipe: FAEPipeline, class_label: int | None) -> ClassConditions | None:
    """The labels a class-conditional base trains under; None for a text-conditional base."""
    if pipe.condition_type != "class":
        if class_label is not None:
            raise InvalidInputError(
                "this base is text-conditional: give captions and a trigger phrase, not a class label"
            )
        return None
    mode = "random" if class_label is None else "fixed"
    return ClassConditions(pipe.num_classes, mode, fixed_label=class_label)


def _add_trainable_lora(generator: Any, rank: int, alpha: float, seed: int) -> list[tuple[str, Any]]:
    """Inject a fresh adapter (seeded init) and make its matrices, in float32, the only trainable weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "lora-init"))
        inject(generator, lora_config(rank, alpha), ADAPTER_NAME)
    named_params = []
    for name, param in generator.named_parameters():
        is_lora = ".lora_" in name
        param.requires_grad_(is_lora)
        if is_lora:
            param.data = param.data.float()  # train the adapter in float32 even on a bf16 base
            named_params.append((name, param))
    for _, layer in lora_layers(generator):
        layer.set_adapter([ADAPTER_NAME])
    return named_params


def _captions(dataset: Any, trigger_phrase: str | None) -> list[tuple[str, ...]]:
    """Each image's caption variants with the trigger phrase in front."""
    trigger = " ".join((trigger_phrase or "").split())
    return [
        tuple(" ".join(part for part in (trigger, caption) if part) for caption in variants)
        for variants in dataset.caption_choices()
    ]


def run_finetune(
    *,
    images_dir: Path | str,
    out_dir: Path | str,
    base_dir: Path | str | None = None,
    pipeline: FAEPipeline | None = None,
    steps: int = 500,
    rank: int = 8,
    learning_rate: float = 1e-4,
    trigger_phrase: str | None = None,
    seed: int = 0,
    progress_callback: TrainingProgressCallback | None = None,
    cancel_check: CancelCheck | None = None,
    class_label: int | None = None,
    batch_size: int = 8,
    work_dir: Path | str | None = None,
    cache_dir: Path | str | None = None,
    checkpoint_every: int = 100,
    device: str | None = None,
    show_progress: bool | None = False,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on the images in `images_dir` (a folder or a zip) and write it to `out_dir`.

    The base is a model directory (`base_dir`) or a loaded pipeline (`pipeline`, left unchanged). Progress goes
    to `progress_callback(step=, total=, eta_s=, loss=)`; `cancel_check()` returning True stops the run with
    TrainingCanceled (a GenerationCanceled). Returns a JSON-able report.
    """
    _check_settings(steps, rank, learning_rate, trigger_phrase, batch_size)
    started = time.perf_counter()
    out_dir = check_adapter_destination(out_dir)  # before any work, not after it
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(f"{out_dir.name}.work")
    pipe, generator = _base(base_dir, pipeline, device)
    torch_device = pipe.device
    class_conditions = _class_conditions(pipe, class_label)  # checked before the slower dataset encoding
    dataset = open_image_dataset(
        Path(images_dir),
        min_images=FINETUNE_MIN_IMAGES,
        max_images=FINETUNE_MAX_IMAGES,
        extract_dir=work / "dataset",
    )
    cache = LatentCache(Path(cache_dir) if cache_dir is not None else work / "cache")
    latents = cache.latents(dataset, pipe.encoder, pipe.compressor, pipe.image_size)

    conditions = class_conditions or TextConditions(pipe.encode_text, _captions(dataset, trigger_phrase))

    base_fingerprint = module_fingerprint(generator)
    alpha = float(rank)  # scale 1 at rank r: the learning rate does not need retuning per rank
    named_params = _add_trainable_lora(generator, rank, alpha, seed)

    gen_cfg = generator.config
    stats = (gen_cfg.latent_mean, gen_cfg.latent_std) if gen_cfg.latent_mean and gen_cfg.latent_std else None
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_every=checkpoint_every,
        condition_dropout=0.1,
        warmup_steps=min(50, steps // 10),
    )
    identity = {"base": base_fingerprint, "rank": rank, "trigger": trigger_phrase, **conditions.describe()}
    task = GeneratorTask(
        "finetune",
        generator,
        named_params,
        latents,
        conditions,
        pipe.scheduler,
        stats,
        config,
        torch_device,
        ema_decay=None,
        identity=identity,
    )
    options = LoopOptions(
        steps=steps,
        seed=seed,
        checkpoint_dir=work / "checkpoints",
        checkpoint_every=checkpoint_every,
        resume=True,
        progress_callback=progress_callback,
        cancel_check=cancel_check,
        show_progress=show_progress,
    )
    result = run_loop(task, options, torch_device)

    training = {**result.report(), "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed}
    metadata = {
        "trigger_phrase": trigger_phrase,
        "condition_type": pipe.condition_type,
        **conditions.describe(),
        "training": training,
        "dataset": {k: v for k, v in dataset.report().items() if k != "skipped"},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_adapter(out_dir, generator, ADAPTER_NAME, rank, alpha, base_fingerprint, metadata)
    _clean_work_dir(work, keep_cache=cache_dir is not None)
    return {
        "adapter_dir": str(out_dir),
        "adapter_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        "base_fingerprint": base_fingerprint,
        "rank": rank,
        "alpha": alpha,
        "trigger_phrase": trigger_phrase,
        "condition_type": pipe.condition_type,
        **conditions.describe(),
        **training,
        "cache_hit": latents.hit,
        "dataset": dataset.report(),
        "total_duration_s": round(time.perf_counter() - started, 3),
    }


def _clean_work_dir(work: Path, keep_cache: bool) -> None:
    """After a successful run: checkpoints and an extracted zip are no longer needed."""
    for name in ("checkpoints", "dataset") + (() if keep_cache else ("cache",)):
        shutil.rmtree(work / name, ignore_errors=True)
    with contextlib.suppress(OSError):  # not empty (a kept cache) or already gone
        work.rmdir()
