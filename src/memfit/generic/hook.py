"""Where memfit falls back to the generic path: a ``model_type`` it has no model of.

The CLI's ``params``, ``infer`` and ``train`` and :func:`memfit.params` call these after
:func:`memfit.arch.from_hf_config` refuses a config: when the refusal is an unknown
``model_type`` (and not, say, a bad field of a known family) the generic path answers, or,
without the ``trace`` extra, one line says how to get it. Any other error is raised as is.
Pure Python until the generic path runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import MemfitError
from . import require, unknown_model_type

__all__ = ["config_of", "fallback_estimate", "fallback_params", "fallback_trace",
           "refuse_fit"]


def config_of(model: Any) -> tuple[dict[str, Any], str] | None:
    """The ``config.json`` dict and a display name for MODEL, when it holds one (else None)."""
    from ..arch import read_config

    if isinstance(model, Mapping):
        return dict(model), str(model.get("_name_or_path", "config"))
    if not isinstance(model, (str, Path)):
        return None
    text = str(model)
    if text.startswith("hf:"):
        from ..inputs import read_hub

        config, _, name = read_hub(text)
        return dict(config), name
    path = Path(text)
    try:
        if path.is_dir():
            path = path / "config.json"
        if not (path.is_file() and path.suffix == ".json"):
            return None
    except (OSError, ValueError):  # a name too long, a NUL byte: not a config
        return None
    name = path.parent.name if path.name == "config.json" else path.stem
    return read_config(path), name or "config"


def _claim(model: Any, exc: MemfitError) -> tuple[dict[str, Any], str]:
    """MODEL's config if ``exc`` is an unknown model_type the generic path takes; else raise."""
    found = config_of(model)
    if found is None or not unknown_model_type(exc, found[0]):
        raise exc
    require(found[0].get("model_type"))
    return found


def fallback_params(model: Any, exc: MemfitError) -> Any:
    """``memfit params`` for a model_type memfit does not model (re-raises ``exc`` otherwise)."""
    from . import generic_params

    config, name = _claim(model, exc)
    return generic_params(config, name)


def fallback_estimate(model: Any, exc: MemfitError, mode: str, options: Any) -> Any:
    """``memfit infer`` / ``train`` for such a model: the traced generic estimate."""
    from . import generic_infer, generic_train

    config, name = _claim(model, exc)
    run = generic_infer if mode == "infer" else generic_train
    return run(config, options, name)


def fallback_trace(model: Any, exc: MemfitError, mode: str, options: Any) -> dict[str, Any]:
    """``memfit trace`` for such a model: transformers' model traced whole (a dict)."""
    from . import generic_trace

    config, name = _claim(model, exc)
    return generic_trace(config, options, mode, name)


def refuse_fit(model: Any, exc: MemfitError) -> None:
    """``memfit fit`` searches thousands of estimates, which the generic path (seconds a
    trace) cannot: for an unknown model_type say what works instead; else re-raise ``exc``."""
    found = config_of(model)
    if found is None or not unknown_model_type(exc, found[0]):
        raise exc
    model_type = found[0].get("model_type")
    raise MemfitError(
        f"model_type: got {model_type!r}; `memfit fit` needs a model memfit has formulas for "
        "(it searches many layouts and sizes); for this type use `memfit params`, `memfit "
        "infer`, `memfit train` or `memfit trace` (traced by transformers, one scenario at a "
        "time; see docs/architectures.md)", field="model_type", value=model_type,
        allowed="a model_type memfit models analytically") from None
