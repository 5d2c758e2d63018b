"""memfit.trace: measure a scenario's peak memory by running the real model on fake tensors.

The instrument every estimate is checked against. It builds the transformers model from a
``config.json`` inside ``FakeTensorMode`` (tensors with shapes and dtypes but no memory) and
runs the scenario's real code (prefill + decode, or a training step) under a dispatch mode
that adds up every live tensor storage, so the numbers are what PyTorch allocates, not a
formula. See ``docs/tracer.md``.

Optional: needs the ``trace`` extra (torch and transformers). Importing this package is
cheap; torch is imported on the first call.

>>> from memfit.trace import trace_inference
>>> r = trace_inference(config, InferenceOptions(batch=1, prompt=1024))  # doctest: +SKIP
>>> r.peak_bytes, r.components["kv_cache"]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import MemfitError
from .result import COMPONENTS, PHASES, TraceResult

if TYPE_CHECKING:
    from ..workload import InferenceOptions, TrainingOptions

__all__ = ["COMPONENTS", "PHASES", "TraceResult", "trace_inference", "trace_training"]


def _require() -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise MemfitError.bad_value("trace", " and ".join(missing) + " missing",
                                    "torch and transformers installed "
                                    "(in a memfit clone: pip install -e \".[trace]\")")


def trace_inference(config: Mapping[str, Any], options: InferenceOptions, *,
                    device_kind: str = "fake") -> TraceResult:
    """Peak memory of a prefill + ``generate`` decode steps; see :mod:`memfit.trace.run`."""
    _require()
    from .run import trace_inference as run

    return run(config, options, device_kind=device_kind)


def trace_training(config: Mapping[str, Any], options: TrainingOptions, *,
                   device_kind: str = "fake") -> TraceResult:
    """Peak memory of a steady-state training step; see :mod:`memfit.trace.run`."""
    _require()
    from .run import trace_training as run

    return run(config, options, device_kind=device_kind)
