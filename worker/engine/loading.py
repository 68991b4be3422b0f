"""Building an engine from settings: load every configured model, accelerate it, warm it up.

Everything torch-heavy is imported inside the functions, so importing the worker stays cheap for processes
that load no model (a webhooks-only worker, the gateway in embedded mode before its model loads).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

from core import metrics
from core.manifests import identify
from core.settings import CatalogSettings, EngineSettings
from worker.engine.interface import GenerationRequest, installed_test_hooks
from worker.engine.loop import Engine

log = logging.getLogger(__name__)

# Batch-size buckets captured as CUDA graphs ahead of time (those up to twice the sample limit are used); one
# compiled graph serves them all. No bucket of 1: a batch of one pads to 2 rather than cost a second compile
# (dynamo specialises size 1), and a guided image is two rows anyway.
BATCH_BUCKETS = (2, 4, 8, 16, 32, 64, 128)


def load_engine(settings: EngineSettings, catalog: CatalogSettings) -> Engine:
    """Load every catalog model onto the configured device (no warm-up: call ``warm_up``)."""
    from model.compiled import accelerate_pipeline, configure_compile_cache
    from model.devices import resolve_device, resolve_dtype
    from model.repository import load_pipeline

    dirs: dict[str, Path] = catalog.model_dirs()
    if not dirs:
        raise ValueError("no models configured: set FAE_MODELS=name=/path/to/model[,name2=...]")
    device, dtype = str(resolve_device(settings.device)), resolve_dtype(settings.dtype)
    pipelines: dict[str, Any] = {}
    for name, path in dirs.items():
        started = time.perf_counter()
        pipelines[name] = load_pipeline(path, device=device, dtype=dtype)
        seconds = round(time.perf_counter() - started, 3)
        log.info(
            "model loaded", extra={"model": name, "path": str(path), "device": device, "seconds": seconds}
        )
    accelerated: dict[str, Any] = {}
    if settings.compile or settings.cuda_graphs:
        configure_compile_cache(settings.compile_cache_dir)
        # Guidance can double a batch's rows: buckets reach twice the sample limit.
        buckets = [b for b in BATCH_BUCKETS if b <= 2 * settings.max_batch_size]
        for name, pipe in pipelines.items():
            accelerated[name] = accelerate_pipeline(
                pipe,
                buckets,
                compile=settings.compile,
                cuda_graphs=settings.cuda_graphs,
                on_graph_fallback=partial(_count_graph_fallback, name),
            )
    engine = Engine(
        pipelines,
        max_batch_size=settings.max_batch_size,
        accelerated=accelerated,
        default_model=catalog.default_model or None,
        device=device,
        hooks=installed_test_hooks(),
        adapter_slots=settings.adapter_slots,
        adapter_max_rank=settings.adapter_max_rank,
    )
    engine.identities = model_identities(catalog)
    for key, (name, version, fingerprint) in engine.identities.items():
        metrics.MODEL_INFO.labels(model=name, version=version or "", fingerprint=fingerprint or "").set(1)
        log.info("model version", extra={"model": key, "version": version, "fingerprint": fingerprint})
    return engine


def model_identities(catalog: CatalogSettings) -> dict[str, tuple[str, str | None, str | None]]:
    """Engine key -> (name, version, fingerprint) of every configured model (its manifest, or its files hashed)."""
    keys = list(catalog.model_dirs())
    return {
        key: (name, (identity := identify(path, version)).version, identity.fingerprint)
        for key, (name, version, path) in zip(keys, catalog.model_entries(), strict=True)
    }


def _count_graph_fallback(model: str, module: str) -> None:
    metrics.CUDA_GRAPH_FALLBACKS.labels(model=model, module=module).inc()


def warm_up(engine: Engine, compile_cache_dir: str | Path | None = None) -> float:
    """Compile and capture every batch bucket, then one tiny generation per model, so the first real job pays
    no first-call costs; sets ``engine.ready``. With a compile cache directory, what was compiled is saved
    there for the next start. The seconds it took."""
    from model.compiled import save_compile_cache, warm_accelerated

    started = time.perf_counter()
    for name, fast in engine.accelerated.items():
        engine.run_exclusive(name, lambda pipe, fast=fast: warm_accelerated(pipe, fast))
    if engine.accelerated and compile_cache_dir is not None:
        saved = save_compile_cache(compile_cache_dir)
        log.info("compile cache saved", extra={"directory": str(compile_cache_dir), "bytes": saved})
    for name in engine.models:
        pipe = engine.pipeline(name)
        text = getattr(pipe, "condition_type", "class") == "text"
        condition: dict[str, Any] = {"prompt": "warm-up"} if text else {"class_label": 0}
        scheduler_config = getattr(getattr(pipe, "scheduler", None), "config", None) or {}
        supported = scheduler_config.get("supported_steps") or [2]  # a few-step model runs its own counts
        steps = 2 if 2 in supported else min(supported)
        engine.run(GenerationRequest(model=name, n=1, steps=steps, seed=0, **condition))
    engine.ready = True
    return time.perf_counter() - started


def load_and_warm(settings: EngineSettings, catalog: CatalogSettings) -> Engine:
    """``load_engine`` then ``warm_up``; the total time goes to fae_model_warmup_seconds."""
    started = time.perf_counter()
    engine = load_engine(settings, catalog)
    warmup_s = warm_up(engine, settings.compile_cache_dir)
    total_s = time.perf_counter() - started
    metrics.MODEL_WARMUP_SECONDS.set(total_s)
    log.info(
        "engine ready",
        extra={
            "models": engine.models,
            "device": engine.device,
            "seconds": round(total_s, 3),
            "warmup_seconds": round(warmup_s, 3),
        },
    )
    return engine
