"""The generation engine: it owns the loaded pipelines and is the only code that calls the model.

``interface`` is what callers see, ``loop`` the device thread that runs requests with step-level batching,
``loading`` builds and warms an engine from settings. Test-only behaviour is an :class:`EngineHooks` object,
never a setting: tests pass one to the constructor, or install one with :func:`install_test_hooks` in a worker
process they start themselves.
"""

from worker.engine.interface import (
    AdapterSpec,
    CancelCheck,
    EngineHooks,
    GenerationHandle,
    GenerationRequest,
    GenerationResult,
    ProgressCallback,
    UnknownModelError,
    install_test_hooks,
)
from worker.engine.loading import load_and_warm, load_engine, warm_up
from worker.engine.loop import Engine

__all__ = [
    "AdapterSpec",
    "CancelCheck",
    "Engine",
    "EngineHooks",
    "GenerationHandle",
    "GenerationRequest",
    "GenerationResult",
    "ProgressCallback",
    "UnknownModelError",
    "install_test_hooks",
    "load_and_warm",
    "load_engine",
    "warm_up",
]
