"""Serving-speed forwards: torch.compile, batch-size buckets and (on CUDA) CUDA-graph replay.

`BucketedForward` wraps a module whose inputs all have the batch first. A call pads its batch up to the next
bucket (repeating the first row, so padded rows are valid inputs), runs the compiled module, or replays the
CUDA graph captured for that bucket, and returns the first rows.

Compilation is one graph per input signature, not one per bucket: the batch dimension is marked dynamic, so
every bucket runs the same kernels, and buckets exist for CUDA-graph capture (a graph has fixed shapes) and to
bound padding. The smallest bucket is 2 because dynamo specialises a dimension of size 1 (a bucket of 1 would
cost a second compile per signature). The compile is `fullgraph` and its recompiles are isolated per wrapper:
a graph break or an exceeded recompile limit raises instead of silently running eager. `warm_accelerated`
compiles and captures every signature the engine serves, under `torch.inference_mode()`, the mode the engine
serves in (dynamo guards on grad mode: a mismatch would recompile on the first request).

Each graph's first replay is checked against the un-graphed function (`GraphCapture`): a graph that disagrees
(captured empty on the wrong device, say) is logged, counted through `on_graph_fallback`, and that signature
runs un-graphed.

Compile caches persist across restarts: `configure_compile_cache(dir)` points inductor and triton at a directory
a volume can hold and loads the portable cache artifacts saved there by `save_compile_cache(dir)` after a
previous warm-up, so a restarted worker loads its compiled graphs instead of compiling them.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from .adapters import has_adapter_slots
from .batching import DenoisingBatcher
from .io import write_bytes_atomically

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (2, 4, 8, 16, 32, 64)
# Portable compile artifacts (inductor, AOTAutograd, autotuning) in the compile cache directory.
CACHE_ARTIFACTS_FILE = "compile-artifacts.bin"

Args = tuple[torch.Tensor, ...]
Kwargs = dict[str, torch.Tensor]


def configure_compile_cache(directory: str | Path | None) -> None:
    """Point inductor's FX-graph and kernel caches (and triton's) at a persistent directory, and load the
    artifacts a previous warm-up saved there (call before compiling)."""
    if directory is None:
        return
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    # Assigned, not defaulted: importing torch._dynamo (any model import) already set inductor's to /tmp.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True
    load_compile_cache(root)


def load_compile_cache(directory: str | Path) -> bool:
    """Load saved compile artifacts; False when there are none or they are unusable (then compiles run cold)."""
    path = Path(directory) / CACHE_ARTIFACTS_FILE
    if not path.is_file():
        return False
    try:  # torch returns None for a file it cannot read (it logs why)
        loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
    except Exception:  # e.g. a cache from another torch build
        log.warning("compile cache artifacts could not be loaded", exc_info=True)
        loaded = False
    if not loaded:
        log.warning("compiling cold: unusable compile cache artifacts", extra={"path": str(path)})
    return loaded


def save_compile_cache(directory: str | Path) -> int:
    """After warm-up: write every compile artifact this process created or loaded, atomically (a reader never
    sees half a file). Returns the bytes written (0 when nothing was compiled)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    data, _ = saved
    write_bytes_atomically(Path(directory) / CACHE_ARTIFACTS_FILE, data)
    return len(data)


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


class CapturedGraph(Protocol):
    out: torch.Tensor  # the static output buffer every replay writes

    def replay(self, args: Args, kwargs: Kwargs) -> torch.Tensor: ...


class GraphCapture(Protocol):
    """How a `BucketedForward` captures graphs: `CudaGraphCapture` on CUDA; tests drive the same logic with a
    fake. `device(d)` is entered around every capture and replay."""

    def device(self, device: torch.device) -> AbstractContextManager[Any]: ...

    def capture(self, fn: Callable[..., torch.Tensor], args: Args, kwargs: Kwargs) -> CapturedGraph: ...


class CudaGraphCapture:
    """CUDA graphs sharing one memory pool. Streams, capture and replay use the current CUDA device, so
    `device()` makes it the module's: captured from another device a graph would hold none of its kernels."""

    def __init__(self) -> None:
        self._pool: Any = None

    def device(self, device: torch.device) -> AbstractContextManager[Any]:
        return torch.cuda.device(device)

    def capture(self, fn: Callable[..., torch.Tensor], args: Args, kwargs: Kwargs) -> _Graph:
        static_args = tuple(a.clone() for a in args)
        static_kwargs = {k: v.clone() for k, v in kwargs.items()}
        # Warm up on a side stream (compiles, autotunes, allocates), then capture into a shared memory pool.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = fn(*static_args, **static_kwargs)
        return _Graph(graph, static_args, static_kwargs, static_out)


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
        backend: str = "inductor",
        graphs: GraphCapture | None = None,
        name: str | None = None,
        on_graph_fallback: Callable[[str], None] | None = None,
    ) -> None:
        """`fn`: an already compiled function of `module` to reuse (e.g. the same kernels with and without
        CUDA graphs); otherwise `module` is compiled here when `compile` is set, with `backend` ("eager"
        traces and guards like inductor without generating code). `graphs`: how to capture graphs (default:
        CUDA graphs when `cuda_graphs` and the module is on CUDA). `on_graph_fallback(name)` is called for
        each signature whose graph failed its first-replay check."""
        self.module = module
        self.name = name or type(module).__name__
        self.buckets = tuple(sorted(buckets))
        self.device = next(module.parameters()).device
        if graphs is None and cuda_graphs and self.device.type == "cuda":
            graphs = CudaGraphCapture()
        self.graphs = graphs
        if fn is None:
            fn = (
                torch.compile(
                    module,
                    mode=compile_mode,
                    backend=backend,
                    dynamic=False,  # dynamic only where marked: the batch dimension
                    fullgraph=True,
                    isolate_recompiles=True,  # models sharing a class do not share one recompile limit
                )
                if compile
                else module
            )
        self.fn: Callable[..., torch.Tensor] = fn
        self._graphs: dict[tuple, CapturedGraph | None] = {}  # None: the graph failed its check
        self.on_graph_fallback = on_graph_fallback
        self.graph_fallbacks = 0

    @property
    def cuda_graphs(self) -> bool:
        return self.graphs is not None

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
        if self.graphs is None:
            return self._run(*padded_args, **padded_kwargs)[:n]
        signature = (
            size,
            *((tuple(a.shape[1:]), a.dtype) for a in args),
            *((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(kwargs.items())),
        )
        with self.graphs.device(self.device):
            if signature not in self._graphs:
                return self._first_graphed_call(signature, padded_args, padded_kwargs)[:n]
            graph = self._graphs[signature]
            if graph is None:
                return self._run(*padded_args, **padded_kwargs)[:n]
            return graph.replay(padded_args, padded_kwargs)[:n].clone()

    def _run(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        for t in _tensors(args, kwargs):  # one compiled graph for every bucket
            if t.shape[0] > 1:
                torch._dynamo.mark_dynamic(t, 0)
        return self.fn(*args, **kwargs)

    def _first_graphed_call(self, signature: tuple, args: Args, kwargs: Kwargs) -> torch.Tensor:
        """Capture a graph for a new signature and check its first replay against the un-graphed function.

        The static output is poisoned (NaN) before that replay, so a graph that computes nothing (captured on
        another device) fails the check as well as one that computes something else.
        """
        assert self.graphs is not None
        graph = self.graphs.capture(self._run, args, kwargs)
        expected = self._run(*args, **kwargs)
        if graph.out.is_floating_point():
            graph.out.fill_(float("nan"))
        got = graph.replay(args, kwargs)
        error = _relative_error(got, expected)
        if error <= _graph_tolerance(expected.dtype):
            self._graphs[signature] = graph
            return got.clone()
        self._graphs[signature] = None
        self.graph_fallbacks += 1
        log.error(
            "CUDA graph replay disagrees with the un-graphed forward: this shape runs without a graph",
            extra={
                "component": self.name,
                "batch": signature[0],
                "device": str(self.device),
                "relative_error": error,
            },
        )
        if self.on_graph_fallback is not None:
            self.on_graph_fallback(self.name)
        return expected

    def warmup(self, example_args: Sequence[torch.Tensor], example_kwargs: dict[str, torch.Tensor]) -> None:
        """Compile (and capture) every bucket, largest first so smaller graphs reuse its memory pool."""
        for size in sorted(self.buckets, reverse=True):
            args = tuple(_pad(a[:1], size) for a in example_args)
            kwargs = {k: _pad(v[:1], size) for k, v in example_kwargs.items()}
            self(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _tensors(args: Args, kwargs: Kwargs) -> Iterator[torch.Tensor]:
    yield from args
    yield from kwargs.values()


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute difference over the largest magnitude (NaN anywhere gives NaN, which fails every check)."""
    diff = (got.float() - expected.float()).abs().max()
    scale = expected.float().abs().max().clamp_min(1e-6)
    return float(diff / scale)


def _graph_tolerance(dtype: torch.dtype) -> float:
    # The same kernels replayed: equal up to reduction order, at the dtype's precision.
    return 1e-4 if dtype == torch.float32 else 2e-2


class _Graph:
    def __init__(self, graph: torch.cuda.CUDAGraph, args: Args, kwargs: Kwargs, out: torch.Tensor) -> None:
        self.graph, self.args, self.kwargs, self.out = graph, args, kwargs, out

    def replay(self, args: Args, kwargs: Kwargs) -> torch.Tensor:
        for static, new in zip(self.args, args, strict=True):
            static.copy_(new)
        for key, new in kwargs.items():
            self.kwargs[key].copy_(new)
        self.graph.replay()
        return self.out


def decode_chunk_size() -> int:
    """Rows a `DenoisingBatcher` decodes per call (its `decode_batch_size` default): no decoder call is larger."""
    return int(inspect.signature(DenoisingBatcher).parameters["decode_batch_size"].default)


def accelerate_pipeline(
    pipe: torch.nn.Module | object,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    compile: bool = True,
    cuda_graphs: bool = True,
    backend: str = "inductor",
    on_graph_fallback: Callable[[str], None] | None = None,
) -> dict[str, BucketedForward]:
    """Bucketed, compiled (and graphed) forwards for a pipeline's generator and decoders.

    Returns {"generator", "feature_decoder", "pixel_decoder"}; the pipeline's modules are left untouched (the
    `DenoisingBatcher` calls these wrappers), so eager and accelerated paths stay side by side for correctness
    checks. Decoder buckets stop at the decode chunk (larger ones would never be used).
    """
    chunk = decode_chunk_size()
    decoder_buckets = sorted({b for b in buckets if b < chunk} | {min(chunk, max(buckets))})
    return {
        name: BucketedForward(
            getattr(pipe, name),
            buckets if name == "generator" else decoder_buckets,
            compile=compile,
            cuda_graphs=cuda_graphs,
            backend=backend,
            name=name,
            on_graph_fallback=on_graph_fallback,
        )
        for name in ("generator", "feature_decoder", "pixel_decoder")
    }


def example_generator_inputs(
    pipe: Any, batch: int
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Valid generator inputs of a given batch size (random latents and timesteps, a real condition), in the
    signature of a batch without adapters."""
    device, dtype = pipe.device, pipe.generator.dtype
    x = torch.randn(batch, *pipe.latent_shape, device=device, dtype=dtype)
    t = torch.rand(batch, device=device)
    if pipe.condition_type == "class":
        kwargs = {"class_labels": torch.randint(0, pipe.num_classes, (batch,), device=device)}
    else:
        kwargs = pipe.encode_text(["a photo"] * batch)
    return (x, t), kwargs


@torch.inference_mode()  # the engine's serving mode: dynamo guards on grad mode, so warm-up must match it
def warm_accelerated(pipe: Any, fast: dict[str, BucketedForward]) -> None:
    """Compile (and on CUDA capture) every bucket of the generator and both decoders, in every signature the
    engine calls them with: batches without adapters, and with slots attached, batches that carry each row's
    adapter slot (model/adapters/slots.py)."""
    args, kwargs = example_generator_inputs(pipe, 1)
    fast["generator"].warmup(args, kwargs)
    if has_adapter_slots(pipe.generator):
        slots = torch.zeros(1, dtype=torch.long, device=pipe.device)
        fast["generator"].warmup(args, {**kwargs, "adapter_slots": slots})
    latents = args[0]
    features = pipe.feature_decoder(latents.to(pipe.feature_decoder.dtype))
    fast["feature_decoder"].warmup((latents,), {})
    fast["pixel_decoder"].warmup((features,), {})
