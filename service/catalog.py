"""What the gateway knows about its models, read from their JSON config files (never torch).

A model directory is a diffusers pipeline folder: `model_index.json` plus one folder per component. The
gateway needs three facts to validate a request before it is queued: the condition type (class labels or
text prompts), the number of classes, and the image size. `describe_model` is the one place that reads them,
leniently: a key that is missing stays None and the worker's own validation decides.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.manifests import identify, resolve_reference
from core.settings import Settings

ConditionType = Literal["class", "text"]

# Generator classes whose condition type is known by name (the model stack's LightningDiT and MMDiT).
_CONDITION_BY_CLASS: dict[str, ConditionType] = {"LightningDiT": "class", "MMDiT": "text"}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    condition_type: ConditionType | None
    num_classes: int | None
    image_size: int | None
    default: bool = False
    version: str | None = None
    fingerprint: str | None = None
    # The engine's key: the name for a name's current version, `name@version` for an older one kept loaded.
    key: str = ""
    # A few-step distilled model (scheduler config): the step counts it runs, the guidance built into it.
    supported_steps: tuple[int, ...] | None = None
    distilled_guidance: float | None = None

    @property
    def current(self) -> bool:
        return self.key in ("", self.name)

    def public(self) -> dict[str, Any]:
        """What `GET /v1/models` shows (no filesystem paths)."""
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "current": self.current,
            "condition_type": self.condition_type,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "default": self.default,
            "supported_steps": list(self.supported_steps) if self.supported_steps else None,
            "distilled_guidance": self.distilled_guidance,
        }

    def job_fields(self, reference: str | None) -> dict[str, Any]:
        """What a job admitted for `reference` records: `model` is the plain name (runs on whatever version
        is current when a worker takes it) unless the caller pinned a version (`name@version`, or the full
        fingerprint when pinned by fingerprint), and the version the catalog holds now."""
        model = self.name
        if reference is not None and "@" in reference:
            pin = reference.partition("@")[2]
            model = f"{self.name}@{self.version if pin == self.version else self.fingerprint}"
        return {"model": model, "model_version": self.version, "model_fingerprint": self.fingerprint}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def describe_model(
    name: str, path: Path, default: bool = False, version: str | None = None, key: str = ""
) -> ModelInfo:
    index = _read_json(path / "model_index.json")
    generator = _read_json(path / "generator" / "config.json")
    condition = generator.get("condition_type") or index.get("condition_type")
    if condition not in ("class", "text"):
        generator_class = generator.get("_class_name") or (index.get("generator") or [None, None])[-1]
        condition = _CONDITION_BY_CLASS.get(str(generator_class))
    if condition is None and "num_classes" in generator:
        condition = "class"
    num_classes = _int_or_none(generator.get("num_classes", index.get("num_classes")))
    image_size = None
    for source in (generator, index):
        image_size = (
            image_size or _int_or_none(source.get("image_size")) or _int_or_none(source.get("sample_size"))
        )
    if image_size is None:  # the pixel decoder draws grid_size × patch_size pixels a side
        pixel = _read_json(path / "pixel_decoder" / "config.json")
        grid, patch = _int_or_none(pixel.get("grid_size")), _int_or_none(pixel.get("patch_size"))
        image_size = grid * patch if grid and patch else _int_or_none(pixel.get("image_size"))
    identity = identify(path, version)
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    steps = scheduler.get("supported_steps")
    supported = (
        tuple(steps) if isinstance(steps, list) and all(_int_or_none(n) for n in steps) and steps else None
    )
    guidance = scheduler.get("distilled_guidance")
    return ModelInfo(
        name=name,
        path=path,
        condition_type=condition,
        num_classes=num_classes if condition == "class" else None,
        image_size=image_size,
        default=default,
        version=identity.version,
        fingerprint=identity.fingerprint,
        key=key or name,
        supported_steps=supported,
        distilled_guidance=float(guidance) if isinstance(guidance, int | float) else None,
    )


def configured_model_dirs(settings: Settings) -> dict[str, Path]:
    """FAE_MODELS, or (when empty) every pipeline folder under data_dir/models (embedded mode's default)."""
    dirs = settings.catalog.model_dirs()
    if dirs:
        return dirs
    root = Path(settings.process.data_dir) / "models"
    if not root.is_dir():
        return {}
    # Dot-folders are a pull in progress or a replaced model kept aside (`fae models pull`): never on offer.
    return {
        p.name: p
        for p in sorted(root.iterdir())
        if not p.name.startswith(".") and (p / "model_index.json").is_file()
    }


def describe_models(settings: Settings) -> list[ModelInfo]:
    """Every configured model version (FAE_MODELS), or the embedded default directories."""
    entries = settings.catalog.model_entries()
    if entries:
        keys = list(settings.catalog.model_dirs())
    else:
        entries = [(name, None, path) for name, path in configured_model_dirs(settings).items()]
        keys = [name for name, _, _ in entries]
    default = (
        settings.catalog.default_model if settings.catalog.default_model in keys else next(iter(keys), None)
    )
    return [
        describe_model(name, path, default=key == default, version=version, key=key)
        for key, (name, version, path) in zip(keys, entries, strict=True)
    ]


class ModelCatalog:
    """The models, re-read at most every `refresh_s` (and at once when asked for a name it lacks)."""

    def __init__(self, settings: Settings, refresh_s: float = 30.0) -> None:
        self.settings, self.refresh_s = settings, refresh_s
        self._lock = threading.Lock()
        self._models: list[ModelInfo] = []
        self._read_at = float("-inf")

    def all(self, force: bool = False) -> list[ModelInfo]:
        with self._lock:
            if force or time.monotonic() - self._read_at > self.refresh_s:
                self._models = describe_models(self.settings)
                self._read_at = time.monotonic()
            return list(self._models)

    def resolve(self, name: str | None) -> ModelInfo | None:
        """The named model (`name`: its current version; `name@version` or `name@<fingerprint>`: that version),
        or the default for None; None when there is no such model."""
        for force in (False, True):
            models = self.all(force=force)
            if name is None:
                found = next((m for m in models if m.default), None)
            else:
                key = resolve_reference(name, [(m.key, m.name, m.version, m.fingerprint) for m in models])
                found = next((m for m in models if m.key == key), None)
            if found is not None:
                return found
        return None
