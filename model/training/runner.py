"""`train`: run FAE stages on a dataset and write a model directory that `FAEPipeline.from_pretrained` loads.

Layout: `out_dir` is the model (rewritten atomically after each stage, so it is always loadable);
`work_dir` (default: `<out_dir>.work` beside it) holds `checkpoints/<stage>/step-*`, the extracted dataset
when it was a zip, and the feature/latent cache (unless `cache_dir` points elsewhere, e.g. to share it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..errors import InvalidInputError
from ..fingerprint import json_fingerprint
from ..io import write_directory_atomically
from ..latent_cache import LatentCache
from ..pipeline import FAEPipeline
from ..shards import ShardedDataset, open_training_dataset
from .autoencoder import FeatureAutoencoderTask, PixelDecoderTask
from .config import STAGES, TrainConfig
from .feature_source import (
    CachedBatches,
    ShardOrder,
    StreamedBatches,
    choose_feature_source,
    feature_cache_bytes,
)
from .generator import ClassConditions, GeneratorTask, TextConditions
from .optim import trainable
from .progress import CancelCheck, TrainingProgressCallback
from .train_loop import LoopOptions, run_loop

STAGE_CHOICES = (*STAGES, "all")


def stage_list(stage: str, config: TrainConfig) -> list[tuple[str, int]]:
    """(stage, steps) pairs to run."""
    if stage not in STAGE_CHOICES:
        raise InvalidInputError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CHOICES)}")
    if stage != "all":
        return [(stage, config.steps)]
    recon = config.recon_steps if config.recon_steps is not None else config.steps // 4
    stages = [("ia", config.steps), ("ib", config.steps), ("ib-recon", recon), ("ii", config.steps)]
    return [(name, steps) for name, steps in stages if steps > 0]


def check_model_destination(out_dir: Path) -> Path:
    """A model may replace an empty directory or an older model, nothing else."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "model_index.json").is_file())
    ):
        raise InvalidInputError(f"{out_dir} exists and is not a model directory: choose another --out")
    return out_dir


def write_model(pipe: FAEPipeline, out_dir: Path) -> None:
    """Replace `out_dir` atomically (a reader sees the old model or the new one, never a mix)."""
    write_directory_atomically(check_model_destination(out_dir), pipe.save_pretrained, overwrite=True)


def load_training_pipeline(
    preset: str | None, model_dir: Path | None, seed: int, device: torch.device
) -> FAEPipeline:
    if (preset is None) == (model_dir is None):
        raise InvalidInputError(
            "give exactly one of a preset (a new model) or a model directory (to train on)"
        )
    if preset is not None:
        pipe = FAEPipeline.from_preset(preset, seed=seed)
    else:
        from ..repository import check_model_dir

        check_model_dir(Path(model_dir))
        pipe = FAEPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    if pipe.encoder is None or pipe.compressor is None:
        raise InvalidInputError(
            "training needs the model's frozen encoder and compressor, and this model has none"
        )
    pipe.to(device)
    for component in pipe.components.values():
        # Train in float32 (autocast adds bf16 on GPUs); a bf16-saved model is upcast.
        if isinstance(component, torch.nn.Module) and any(
            p.dtype != torch.float32 for p in component.parameters()
        ):
            component.to(torch.float32)
    return pipe


def train(
    *,
    data: Path,
    out_dir: Path,
    preset: str | None = None,
    model_dir: Path | None = None,
    stage: str = "all",
    config: TrainConfig | None = None,
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
    resume: bool = False,
    device: str | None = None,
    progress_callback: TrainingProgressCallback | None = None,
    cancel_check: CancelCheck | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Train `stage` ("ia", "ib", "ib-recon", "ii" or "all") and write the model to `out_dir`; returns a report."""
    config = (config or TrainConfig()).for_preset(preset)
    stages = stage_list(stage, config)
    out_dir = check_model_destination(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir.with_name(f"{out_dir.name}.work")
    torch_device = resolve_device(device)
    pipe = load_training_pipeline(preset, model_dir, config.seed, torch_device)
    dataset = open_training_dataset(Path(data), min_images=1, extract_dir=work_dir / "dataset")
    cache = LatentCache(Path(cache_dir) if cache_dir is not None else work_dir / "cache")
    report: dict[str, Any] = {"dataset": dataset.report(), "stages": {}, "out_dir": str(out_dir)}
    for name, steps in stages:
        stage_config = TrainConfig.from_dict({**config.to_dict(), "steps": steps})
        options = LoopOptions(
            steps=steps,
            seed=config.seed,
            checkpoint_dir=work_dir / "checkpoints" / name,
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=config.keep_checkpoints,
            resume=resume,
            progress_callback=progress_callback,
            cancel_check=cancel_check,
            show_progress=show_progress,
        )
        task, cache_hit = _make_task(
            name, pipe, dataset, cache, stage_config, torch_device, new_model=preset is not None
        )
        try:
            result = run_loop(task, options, torch_device)
        finally:
            if hasattr(task, "features"):
                task.features.close()  # a streamed source's reader thread, also when a stage fails
        report["stages"][name] = {**result.report(), "cache_hit": cache_hit}
        if name in ("ia", "ib", "ib-recon"):
            report["stages"][name]["feature_source"] = "stream" if cache_hit is None else "cache"
        write_model(pipe, out_dir)
    return report


def _make_task(
    name: str,
    pipe: FAEPipeline,
    dataset: Any,
    cache: LatentCache,
    config: TrainConfig,
    device: torch.device,
    new_model: bool = False,
) -> tuple[Any, bool]:
    if name in ("ia", "ib", "ib-recon"):
        features, cache_hit = _feature_batches(name, pipe, dataset, cache, config, device)
        if name == "ia":
            task = FeatureAutoencoderTask(
                pipe.compressor,
                pipe.feature_decoder,
                features,
                config,
                device,
                standardize_features=new_model,
            )
            return task, cache_hit
        mode = "noisy" if name == "ib" else "recon"
        task = PixelDecoderTask(
            mode,
            pipe.pixel_decoder,
            pipe.encoder,
            features,
            config,
            device,
            pipe.compressor,
            pipe.feature_decoder,
        )
        return task, cache_hit
    latents = cache.latents(dataset, pipe.encoder, pipe.compressor, pipe.image_size)
    # Stage II standardises latents channel-wise with statistics of this dataset, stored in the generator's
    # config so that sampling denormalises with the same numbers.
    latent_mean, latent_std = latents.channel_stats()
    pipe.generator.register_to_config(latent_mean=latent_mean, latent_std=latent_std)
    if pipe.condition_type == "class":
        labels = dataset.labels()
        conditions = ClassConditions(pipe.num_classes, "dataset", labels or [None] * len(dataset))
        identity = {"labels": json_fingerprint(labels)}
    else:
        captions = dataset.caption_choices()
        conditions = TextConditions(pipe.encode_text, captions)
        identity = {"captions": json_fingerprint(captions)}  # resuming under other captions is refused
    params = trainable(pipe.generator, "generator")
    task = GeneratorTask(
        "ii",
        pipe.generator,
        params,
        latents,
        conditions,
        pipe.scheduler,
        (latent_mean, latent_std),
        config,
        device,
        ema_decay=config.ema_decay,
        identity=identity,
    )
    return task, latents.hit


def _feature_batches(
    name: str,
    pipe: FAEPipeline,
    dataset: Any,
    cache: LatentCache,
    config: TrainConfig,
    device: torch.device,
) -> tuple[Any, bool | None]:
    """The stage's (features, pixels) source and whether the cache was hit (None: streamed, no cache).

    Sharded data is read in shard order by both sources, so that they train the same model."""
    sharded = isinstance(dataset, ShardedDataset)
    size = feature_cache_bytes(len(dataset), pipe.encoder, pipe.image_size, config.feature_cache_dtype)
    source = choose_feature_source(config.feature_source, sharded, size, config.feature_cache_budget_gb)
    if sharded:
        order = ShardOrder(dataset.shard_sizes, config.batch_size, config.seed, name)
        if source == "stream":
            batches = StreamedBatches(
                dataset, pipe.encoder, pipe.image_size, order, device, prefetch=config.prefetch_batches
            )
            return batches, None
    features = cache.features(dataset, pipe.encoder, pipe.image_size, dtype=config.feature_cache_dtype)
    if sharded:
        return CachedBatches(features, order), features.hit
    return features, features.hit
