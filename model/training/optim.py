"""AdamW with a warm-up/cosine (or constant) schedule and gradient clipping, with one state dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import fixed_parameter_names
from .train_loop import lr_multiplier


class Optimization:
    def __init__(
        self,
        named_params: list[tuple[str, nn.Parameter]],
        learning_rate: float,
        weight_decay: float,
        schedule: str,
        warmup: int,
        total: int,
        grad_clip: float | None,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        self.named_params = named_params
        self.params = [p for _, p in named_params]
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(
            self.params, lr=learning_rate, betas=betas, weight_decay=weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(schedule, warmup, total)
        )

    def step(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def parameter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.named_params}

    def load_parameter_state(self, state: dict[str, torch.Tensor]) -> None:
        names = [name for name, _ in self.named_params]
        missing = [name for name in names if name not in state]
        if missing:
            raise ValueError(f"checkpoint lacks parameters {missing[:5]}")
        with torch.no_grad():
            for name, p in self.named_params:
                p.copy_(state[name])

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.parameter_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_parameter_state(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def trainable(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    """All parameters of `module` set to train, named `prefix.name`; fixed position tables stay frozen."""
    module.train().requires_grad_(True)
    fixed = fixed_parameter_names(module)
    named = []
    for name, p in module.named_parameters():
        if name in fixed:
            p.requires_grad_(False)
        else:
            named.append((f"{prefix}.{name}", p))
    return named
