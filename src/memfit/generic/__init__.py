"""memfit.generic: any model transformers can build, measured instead of modelled.

memfit's analytical estimators know a fixed set of families (:data:`memfit.arch.FAMILIES`).
For any other ``model_type`` transformers knows (BERT, Mamba, LLaVA, Jamba...), this package:

- counts parameters and buffers exactly, by component, from the model built on the meta
  device (:func:`generic_params`; grouping rules in :mod:`memfit.generic.params`);
- estimates inference and training peaks from the tracer (:mod:`memfit.trace`): it traces
  the model at reduced depth (two and three blocks of each distinct block type) and
  extrapolates each phase's peak linearly to the full depth (:func:`generic_infer`,
  :func:`generic_train`; see :mod:`memfit.generic.depth`), caching the traced results on disk
  (:mod:`memfit.generic.cache`) so a repeated question is instant.

Needs the ``trace`` extra (torch and transformers). Importing this package is cheap: torch is
imported on the first call. Every result says it was derived from transformers, with the
model type. See ``docs/architectures.md``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import MemfitError

if TYPE_CHECKING:
    from ..workload import InferenceOptions, TrainingOptions
    from .params import GenericParams
    from .result import GenericEstimate

__all__ = ["INSTALL_HINT", "available", "generic_infer", "generic_params", "generic_trace",
           "generic_train", "require", "unknown_model_type"]

#: What to install for the generic path (the project's ``trace`` extra).
INSTALL_HINT = 'pip install -e ".[trace]"'


def available() -> bool:
    """Whether torch and transformers can be imported (without importing them)."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def require(model_type: object = None) -> None:
    """Raise one clear :class:`MemfitError` unless the ``trace`` extra is installed."""
    if available():
        return
    from ..arch import FAMILIES

    what = f"model_type {model_type!r} has no analytical model in memfit" if model_type \
        else "the generic path"
    raise MemfitError(
        f"model_type: got {model_type!r}; allowed: " + ", ".join(sorted(FAMILIES))
        + f" analytically, or any type transformers knows through the generic path ({what}; "
        f"it needs torch and transformers: {INSTALL_HINT})",
        field="model_type", value=model_type, allowed="a known model_type, or the trace extra")


def unknown_model_type(exc: MemfitError, config: Mapping[str, Any] | None) -> bool:
    """Whether ``exc`` is ``from_hf_config`` refusing a ``model_type`` memfit does not model."""
    from ..arch import FAMILIES

    if exc.field != "model_type" or not isinstance(config, Mapping):
        return False
    model_type = config.get("model_type")
    return isinstance(model_type, str) and model_type not in FAMILIES and model_type != "custom"


def _admit(config: Mapping[str, Any]) -> str:
    """Checks before any import of torch: bounded sizes (:mod:`.bounds`), a model type
    transformers may know, the ``trace`` extra. Returns the model type."""
    from .bounds import check_config, known_model_type

    check_config(config)
    model_type = config.get("model_type")
    if not known_model_type(model_type):
        from ..arch import FAMILIES

        raise MemfitError(
            f"model_type: got {model_type!r}; allowed: " + ", ".join(sorted(FAMILIES))
            + " analytically, or a model_type the installed transformers knows (the generic "
            "path)", field="model_type", value=model_type,
            allowed="a model_type memfit or transformers knows")
    require(model_type)
    return str(model_type)


def generic_params(config: Mapping[str, Any], name: str = "model") -> GenericParams:
    """Exact parameter and buffer counts by component, from the meta-device model."""
    model_type = _admit(config)
    from .bounds import deadline
    from .params import count_generic

    with deadline(f"params of {name} ({model_type})"):
        return count_generic(config, name)


def generic_infer(config: Mapping[str, Any], options: InferenceOptions,
                  name: str = "model") -> GenericEstimate:
    """Inference peak derived by tracing reduced depths (see :mod:`memfit.generic.depth`)."""
    return _traced(config, options, "infer", name)


def generic_train(config: Mapping[str, Any], options: TrainingOptions,
                  name: str = "model") -> GenericEstimate:
    """Training-step peak derived by tracing reduced depths."""
    return _traced(config, options, "train", name)


def _traced(config: Mapping[str, Any], options: Any, workload: str,
            name: str) -> GenericEstimate:
    model_type = _admit(config)
    from .bounds import check_trace_options, deadline
    from .estimate import estimate

    check_trace_options(options, workload)
    with deadline(f"{workload} of {name} ({model_type})"):
        return estimate(config, options, workload, name)


def generic_trace(config: Mapping[str, Any], options: Any, workload: str,
                  name: str = "model") -> dict[str, Any]:
    """``memfit trace`` for a model type memfit has no formulas for: one trace of transformers'
    own model at the full depth (no extrapolation), as a plain dict (``peak_bytes``,
    ``peak_phase``, ``phase_peaks``, ``components``, ``notes``, ``model_type``...)."""
    model_type = _admit(config)
    from .bounds import MAX_FULL_TRACE_BLOCKS, check_trace_options, deadline
    from .estimate import _trace

    check_trace_options(options, workload)
    with deadline(f"trace of {name} ({model_type})"):
        from .build import load_hf_config

        depth = getattr(load_hf_config(config).get_text_config(), "num_hidden_layers", 0)
        if isinstance(depth, int) and depth > MAX_FULL_TRACE_BLOCKS:
            raise MemfitError.bad_value("num_hidden_layers", depth, f"at most "
                                        f"{MAX_FULL_TRACE_BLOCKS} blocks for `memfit trace` on "
                                        "the generic path (`memfit infer/train` extrapolate)")
        summary = _trace(config, None, options, workload)
    note = (f"traced transformers' {summary['model_class']} (model_type "
            f"{summary['model_type']!r}, no analytical model in memfit) at the full depth")
    return {"model": name, "workload": workload, "peak_bytes": summary["peak"],
            "peak_phase": summary["peak_phase"], "phase_peaks": summary["phase_peaks"],
            "components": summary["components"], "model_type": summary["model_type"],
            "model_class": summary["model_class"], "notes": [note, *summary["notes"]]}
