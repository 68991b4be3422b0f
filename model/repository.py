"""Loading model repositories, and the default model used when none is configured."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import WeightsNotFoundError
from .io import write_directory_atomically
from .pipeline import FAEPipeline

# A trained demo model shipped with the repository (see its model card); absent until one is trained.
SHIPPED_DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "fae-demo"
# Its few-step student (model/training/distill.py), served beside it by name in embedded mode.
SHIPPED_FEW_STEP_NAME = "fae-demo-turbo"
SHIPPED_FEW_STEP_DIR = SHIPPED_DEMO_DIR.with_name(SHIPPED_FEW_STEP_NAME)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fae-serve" / "models"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """The shipped demo model if present, else a `tiny` random model created once under the cache dir."""
    if (SHIPPED_DEMO_DIR / "model_index.json").is_file():
        return SHIPPED_DEMO_DIR
    target = (cache_dir or default_cache_dir()) / "tiny"
    if not (target / "model_index.json").is_file():
        pipe = FAEPipeline.from_preset("tiny", seed=0)
        with contextlib.suppress(FileExistsError):  # another process created it first
            write_directory_atomically(target, pipe.save_pretrained)
    return target


def shipped_extra_models() -> dict[str, Path]:
    """Shipped models served beside the default one (by name) when no catalog is configured."""
    if (SHIPPED_FEW_STEP_DIR / "model_index.json").is_file():
        return {SHIPPED_FEW_STEP_NAME: SHIPPED_FEW_STEP_DIR}
    return {}


def check_model_dir(path: Path) -> None:
    path = Path(path)
    if not path.is_dir():
        raise WeightsNotFoundError(
            f"model directory {path} does not exist: expected an FAE model repository "
            "(model_index.json plus one folder per component), e.g. from `fae model-init` or `fae train`"
        )
    if not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(
            f"{path} has no model_index.json: it is not an FAE model repository "
            "(create one with `fae model-init --preset NAME --out DIR`)"
        )


def quiet_loading() -> None:
    """Loading progress bars and cast notices are noise in a server log and a CLI's output."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def pick_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32


def load_pipeline(path: Path | None, device: str = "cpu", dtype: torch.dtype | None = None) -> FAEPipeline:
    """Load a model repository (default: `default_model_dir()`) onto a device, in eval mode."""
    path = Path(path) if path is not None else default_model_dir()
    check_model_dir(path)
    if device == "cpu":
        # Trained attention produces denormal floats, which are many times slower on CPUs; flush them to zero.
        torch.set_flush_denormal(True)
    quiet_loading()
    pipe = FAEPipeline.from_pretrained(str(path), dtype=dtype or pick_dtype(device))
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe
