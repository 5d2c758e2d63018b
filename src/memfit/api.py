"""The Python API: plain functions that take a MODEL and options and return a frozen result.

``memfit.params(model)`` here; ``memfit.infer`` and ``memfit.train`` live in ``estimate``.
MODEL is a catalog name, a ``config.json`` path, a folder holding one, a config dict or a
:class:`~memfit.arch.ModelSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import ModelSpec
from .catalog import resolve_model
from .errors import MemfitError
from .memory.params import count_params

__all__ = ["ParamsResult", "params", "load_model"]

ModelLike = str | Path | Mapping[str, Any] | ModelSpec


def load_model(model: ModelLike) -> ModelSpec:
    """The :class:`ModelSpec` for a catalog name, path, config dict or spec."""
    return resolve_model(model)[0]


@dataclass(frozen=True)
class ParamsResult:
    """Exact parameter counts of one model (``params --json``)."""

    model: str
    model_type: str
    total_params: int
    active_params: int
    components: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_type": self.model_type,
                "total_params": self.total_params, "active_params": self.active_params,
                "components": dict(self.components)}


def params(model: ModelLike) -> Any:
    """Exact parameter counts, total and active per token, by component.

    A ``model_type`` memfit has no model of is counted through :mod:`memfit.generic`
    (transformers on the meta device; needs the ``trace`` extra): a
    :class:`memfit.generic.params.GenericParams` with the same fields and ``notes``.
    """
    try:
        spec = load_model(model)
    except MemfitError as exc:
        from .generic.hook import fallback_params

        return fallback_params(model, exc)  # re-raises exc unless it is an unknown type
    counts = count_params(spec)
    return ParamsResult(model=spec.name, model_type=spec.model_type, total_params=counts.total,
                        active_params=counts.active, components=counts.as_dict())
