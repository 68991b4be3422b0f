"""Serving-speed forwards: torch.compile, batch-size buckets and (on CUDA) CUDA-graph replay.

`BucketedForward` wraps a module whose inputs all have the batch first. A call pads its batch up to the next
bucket (repeating the first row, so padded rows are valid inputs), runs the compiled module, or replays the
CUDA graph captured for that bucket, and returns the first rows. A small, fixed set of shapes means a fixed
set of compiled kernels and graphs, all created during `warmup()`, before a worker reports ready.

Compile caches persist across restarts when `configure_compile_cache(dir)` points inductor and triton at a
directory a volume can hold: a restarted worker then loads kernels instead of compiling them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .adapters import has_adapter_slots

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def configure_compile_cache(directory: str | Path | None) -> None:
    """Point inductor's FX-graph and kernel caches (and triton's) at a persistent directory."""
    if directory is None:
        return
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"batch of {n} exceeds the largest bucket {buckets[-1]}")


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    n = t.shape[0]
    if n == size:
        return t
    return torch.cat([t, t[:1].expand(size - n, *t.shape[1:])])


class BucketedForward:
    """Callable with the wrapped module's signature (positional tensors and tensor keyword arguments)."""

    def __init__(
        self,
        module: torch.nn.Module,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        compile: bool = True,
        cuda_graphs: bool = True,
        compile_mode: str | None = None,
        fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        """`fn`: an already compiled function of `module` to reuse (e.g. the same kernels with and without
        CUDA graphs); otherwise `module` is compiled here when `compile` is set."""
        self.module = module
        self.buckets = tuple(sorted(buckets))
        device = next(module.parameters()).device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        if fn is None:
            fn = (
                torch.compile(module, mode=compile_mode, dynamic=False, fullgraph=False)
                if compile
                else module
            )
        self.fn: Callable[..., torch.Tensor] = fn
        self._graphs: dict[tuple, _Graph] = {}
        self._pool = None

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        n = args[0].shape[0]
        if n > self.buckets[-1]:
            # Larger than every bucket: split rather than fail (slower, still correct).
            size = self.buckets[-1]
            return torch.cat(
                [
                    self(*(a[i : i + size] for a in args), **{k: v[i : i + size] for k, v in kwargs.items()})
                    for i in range(0, n, size)
                ]
            )
        size = bucket_for(n, self.buckets)
        padded_args = tuple(_pad(a, size) for a in args)
        padded_kwargs = {k: _pad(v, size) for k, v in kwargs.items()}
        if not self.cuda_graphs:
            return self.fn(*padded_args, **padded_kwargs)[:n]
        signature = (size, *(tuple(a.shape[1:]) for a in args), *sorted(kwargs))
        graph = self._graphs.get(signature)
        if graph is None:
            graph = self._graphs[signature] = self._capture(padded_args, padded_kwargs)
        return graph.replay(padded_args, padded_kwargs)[:n].clone()

    def _capture(self, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> _Graph:
        static_args = tuple(a.clone() for a in args)
        static_kwargs = {k: v.clone() for k, v in kwargs.items()}
        # Warm up on a side stream (compiles, autotunes, allocates), then capture into a shared memory pool.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.fn(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.fn(*static_args, **static_kwargs)
        return _Graph(graph, static_args, static_kwargs, static_out)

    def warmup(self, example_args: Sequence[torch.Tensor], example_kwargs: dict[str, torch.Tensor]) -> None:
        """Compile (and capture) every bucket, largest first so smaller graphs reuse its memory pool."""
        for size in sorted(self.buckets, reverse=True):
            args = tuple(_pad(a[:1], size) for a in example_args)
            kwargs = {k: _pad(v[:1], size) for k, v in example_kwargs.items()}
            self(*args, **kwargs)
        if self.cuda_graphs:
            torch.cuda.synchronize()


class _Graph:
    def __init__(
        self,
        graph: torch.cuda.CUDAGraph,
        args: tuple[torch.Tensor, ...],
        kwargs: dict[str, torch.Tensor],
        out: torch.Tensor,
    ) -> None:
        self.graph, self.args, self.kwargs, self.out = graph, args, kwargs, out

    def replay(self, args: tuple[torch.Tensor, ...], kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        for static, new in zip(self.args, args, strict=True):
            static.copy_(new)
        for key, new in kwargs.items():
            self.kwargs[key].copy_(new)
        self.graph.replay()
        return self.out


def accelerate_pipeline(
    pipe: torch.nn.Module | object,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    compile: bool = True,
    cuda_graphs: bool = True,
) -> dict[str, BucketedForward]:
    """Bucketed, compiled (and graphed) forwards for a pipeline's generator and decoders.

    Returns {"generator", "feature_decoder", "pixel_decoder"}; the pipeline's modules are left untouched (the
    `DenoisingBatcher` calls these wrappers), so eager and accelerated paths stay side by side for correctness checks.
    """
    return {
        name: BucketedForward(getattr(pipe, name), buckets, compile=compile, cuda_graphs=cuda_graphs)
        for name in ("generator", "feature_decoder", "pixel_decoder")
    }


def example_generator_inputs(
    pipe: Any, batch: int
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Valid generator inputs of a given batch size (random latents and timesteps, a real condition)."""
    device, dtype = pipe.device, pipe.generator.dtype
    x = torch.randn(batch, *pipe.latent_shape, device=device, dtype=dtype)
    t = torch.rand(batch, device=device)
    if pipe.condition_type == "class":
        kwargs = {"class_labels": torch.randint(0, pipe.num_classes, (batch,), device=device)}
    else:
        kwargs = pipe.encode_text(["a photo"] * batch)
    if has_adapter_slots(pipe.generator):  # warm the signature served calls use (model/adapters/slots.py)
        kwargs["adapter_slots"] = torch.zeros(batch, dtype=torch.long, device=device)
    return (x, t), kwargs


@torch.no_grad()
def warm_accelerated(pipe: Any, fast: dict[str, BucketedForward]) -> None:
    """Compile (and on CUDA capture) every bucket of the generator and both decoders."""
    args, kwargs = example_generator_inputs(pipe, 1)
    fast["generator"].warmup(args, kwargs)
    latents = args[0]
    features = pipe.feature_decoder(latents.to(pipe.feature_decoder.dtype))
    fast["feature_decoder"].warmup((latents,), {})
    fast["pixel_decoder"].warmup((features,), {})
