"""Few-step distillation: a student generator that needs 1 to 4 steps and no unconditional pass.

Method: reflow-style distillation on the student's own step grid (Liu et al. 2022, "Flow straight and fast";
InstaFlow, Liu et al. 2023). The teacher's guided ODE maps noise ε to an image latent x₀ (cached pairs,
`teacher_pairs.py`); the student, initialised from the teacher, regresses the straight-line velocity ε − x₀
at x_t = (1 − t)·x₀ + t·ε, conditioned on the prompt alone. Where that fit is exact, one Euler step from any
t on the line lands on x₀, so 1, 2 and 4 steps all reproduce the teacher's guided sample; guidance is in the
targets, so the student makes one call per step. Training t is drawn only from the timesteps the supported
step counts visit (the scheduler's shifted grids), which is where the student's capacity is spent.

Why this and not consistency / shortcut / distribution matching: it is a plain regression on cached pairs
(stable, no second network, no teacher call per training step), the serving sampler stays the same Euler
step, and it fits a CPU budget; its limit is the number of pairs (see the model card).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..fingerprint import module_fingerprint
from ..io import write_directory_atomically
from .checkpoints import CheckpointStore
from .optim import Optimization, trainable
from .teacher_pairs import PairSettings, TeacherPairs, teacher_pairs

SUPPORTED_STEP_LIMIT = 8  # few-step students only; more steps than this is what the teacher is for


@dataclass(frozen=True)
class DistillConfig:
    steps_supported: tuple[int, ...] = (1, 2, 4)
    pairs: PairSettings = field(default_factory=lambda: PairSettings(count=1024))
    train_steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-4
    warmup_steps: int = 50  # linear warm-up, then constant (not tied to train_steps: a run can be extended)
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    seed: int = 0
    # float16 halves the shipped generator (the decoders are the teacher's, copied); loading casts it back.
    save_dtype: str = "float32"

    def __post_init__(self) -> None:
        steps = self.steps_supported
        if not steps or any(not isinstance(s, int) or not 1 <= s <= SUPPORTED_STEP_LIMIT for s in steps):
            raise InvalidInputError(
                f"steps_supported must be step counts from 1 to {SUPPORTED_STEP_LIMIT}, got {list(steps)}"
            )
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidInputError(
                f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}"
            )
        if self.train_steps < 1 or self.batch_size < 1:
            raise InvalidInputError("train_steps and batch_size must be positive")

    def fingerprint(self, teacher: str) -> dict[str, Any]:
        """What a checkpoint must match to resume: not the length, the checkpoint interval or the save dtype
        (a run may be extended or saved differently)."""
        ignored = ("train_steps", "checkpoint_every", "save_dtype")
        return {"teacher": teacher, **{k: v for k, v in asdict(self).items() if k not in ignored}}


def training_timesteps(scheduler: Any, steps_supported: Sequence[int]) -> torch.Tensor:
    """Every t > 0 that the supported step counts' grids visit (t = 1 is noise)."""
    values = {round(float(t), 6) for n in steps_supported for t in scheduler.timesteps(n)[:-1]}
    return torch.tensor(sorted(values), dtype=torch.float32)


class _Student:
    """The trainable copy of the teacher's generator, its EMA and optimiser."""

    def __init__(self, teacher_generator: torch.nn.Module, config: DistillConfig) -> None:
        self.model = copy.deepcopy(teacher_generator).float()
        self.named = trainable(self.model, "generator")
        self.ema = [p.detach().clone() for _, p in self.named]
        self.opt = Optimization(
            self.named,
            learning_rate=config.learning_rate,
            weight_decay=0.0,
            schedule="constant",
            warmup=config.warmup_steps,
            total=config.train_steps,
            grad_clip=1.0,
        )
        self.decay = config.ema_decay

    def update_ema(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for _, p in self.named], 1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict(), "ema": [t.clone() for t in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.ema = [t.clone() for t in state["ema"]]

    def ema_model(self) -> torch.nn.Module:
        final = copy.deepcopy(self.model).eval().requires_grad_(False)
        names = dict(final.named_parameters())
        with torch.no_grad():
            for (name, _), value in zip(self.named, self.ema, strict=True):
                names[name.removeprefix("generator.")].copy_(value)
        return final


def distill_loss(
    model: torch.nn.Module, pairs: TeacherPairs, index: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """MSE between the student's velocity at x_t on the noise→teacher line and the line's velocity ε − x₀."""
    noise, x0 = pairs.noise[index], pairs.latents[index]
    tt = t.view(-1, 1, 1, 1)
    x_t = (1.0 - tt) * x0 + tt * noise
    cond = {k: v[index] for k, v in pairs.cond.items()}
    return F.mse_loss(model(x_t, t, **cond).float(), noise - x0)


def distill(
    teacher: Any,
    prompts: Sequence[str],
    out: Path,
    config: DistillConfig,
    cache_dir: Path,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and save a student model directory at `out`; returns the training record (also saved there)."""
    if teacher.scheduler.config.get("supported_steps"):
        raise InvalidInputError(
            "the teacher is a few-step distilled model; distil from the full model it was made from"
        )
    started = time.perf_counter()
    pairs = teacher_pairs(teacher, prompts, config.pairs, cache_dir, log)
    pairs_seconds = time.perf_counter() - started
    timesteps = training_timesteps(teacher.scheduler, config.steps_supported)
    student = _Student(teacher.generator, config)
    teacher_fp = module_fingerprint(teacher.generator)
    fingerprint = config.fingerprint(teacher_fp)
    store = CheckpointStore(Path(out).with_name(Path(out).name + ".checkpoints"))
    store.remove_stale_temporaries()
    start_step, losses, earlier_seconds = 0, [], 0.0
    if resume and (latest := store.latest()) is not None:
        state = store.load(latest, fingerprint)
        student.load_state_dict(state)
        # the whole run's loss curve and time, across resumes (absent in checkpoints of older code)
        start_step, losses, earlier_seconds = latest, state.get("losses", []), state.get("seconds", 0.0)
        log(f"resumed from step {latest}")
    rng = torch.Generator().manual_seed(config.seed)
    train_started = time.perf_counter()
    for step in range(start_step, config.train_steps):
        rng.manual_seed(config.seed * 1_000_003 + step)  # the batch depends on the step alone: resumable
        index = torch.randint(0, len(pairs), (config.batch_size,), generator=rng)
        t = timesteps[torch.randint(0, len(timesteps), (config.batch_size,), generator=rng)]
        loss = distill_loss(student.model, pairs, index, t)
        student.opt.step(loss)
        student.update_ema()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.train_steps:
            seconds = earlier_seconds + time.perf_counter() - train_started
            store.save(done, {**student.state_dict(), "losses": losses, "seconds": seconds}, fingerprint)
            recent = losses[-config.checkpoint_every :]
            log(f"step {done}/{config.train_steps} loss {sum(recent) / len(recent):.4f}")
    train_seconds = earlier_seconds + time.perf_counter() - train_started
    record = {
        "method": "reflow distillation on the supported step grid, guidance distilled",
        "teacher_generator_fingerprint": teacher_fp,
        "config": asdict(config),
        "training_timesteps": [round(float(t), 6) for t in timesteps],
        "pairs_cache": pairs.path.name,
        "pairs_generated_now": pairs.generated,
        "pairs_seconds": round(pairs_seconds, 1),
        "train_seconds": round(train_seconds, 1),  # all runs of this output, resumes included
        "loss_first_10pct": _mean(losses[: max(1, len(losses) // 10)]),
        "loss_last_10pct": _mean(losses[-max(1, len(losses) // 10) :]),
    }
    save_student(teacher, student.ema_model(), out, config, record)
    return record


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def save_student(
    teacher: Any, generator: torch.nn.Module, out: Path, config: DistillConfig, record: dict[str, Any]
) -> None:
    """The teacher's pipeline with the student generator and a few-step scheduler config, written atomically."""
    from ..pipeline import FAEPipeline

    # Without the private keys: `_use_default_values` (a teacher saved before these fields existed lists them)
    # would make from_config drop the values given here.
    settings = {k: v for k, v in teacher.scheduler.config.items() if not k.startswith("_")}
    scheduler = type(teacher.scheduler).from_config(
        {
            **settings,
            "supported_steps": sorted(config.steps_supported),
            "distilled_guidance": config.pairs.guidance,
        }
    )
    generator = generator.to(getattr(torch, config.save_dtype))
    components = {**teacher.components, "generator": generator, "scheduler": scheduler}
    student = FAEPipeline(**components)

    def write(tmp: str) -> None:
        student.save_pretrained(tmp)
        Path(tmp, "distillation.json").write_text(json.dumps(record, indent=2, default=str))

    write_directory_atomically(Path(out), write, overwrite=True)
