"""Device and dtype names from settings and command lines, resolved once for the whole model stack."""

from __future__ import annotations

import torch


def resolve_device(name: str | None = "auto") -> torch.device:
    """`auto` (or None) is CUDA when available, else the CPU; asking for CUDA where there is none is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str = "auto") -> torch.dtype | None:
    """`auto` is None (the model stack's default: bf16 on a GPU); otherwise a torch dtype by name."""
    if name == "auto":
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return dtype
