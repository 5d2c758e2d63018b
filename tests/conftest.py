"""Shared test helpers: transformers' own parameter count on the meta device."""

from __future__ import annotations

import warnings
from typing import Any

import pytest


def hf_meta_model(config: dict[str, Any]) -> Any:
    """The transformers model for ``config``, built on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = dict(config)
    cfg.pop("quantization_config", None)  # the bf16 architecture, not a quantized loader
    model_type = cfg.pop("model_type")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(hf_config)


def hf_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(parameters, buffer elements) of the transformers model for ``config``."""
    model = hf_meta_model(config)
    return (sum(p.numel() for p in model.parameters()),
            sum(b.numel() for b in model.buffers()))
