"""From a ``config.json`` dict to a transformers model, and the dtypes a scenario asks for."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import MemfitError

__all__ = ["DTYPES", "hf_config", "config_dtype", "dtype_key", "weights_dtype", "build_model",
           "decode_experts", "quiet_transformers"]

#: The weight formats the tracer can build: transformers loads only these without a
#: quantization library.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
#: The class :func:`build_model` builds instead of ``AutoModelForCausalLM`` (``from_config``
#: or ``_from_config``): set by :mod:`memfit.generic` for a vision-language model's own class.
MODEL_CLASS: contextvars.ContextVar[Any] = contextvars.ContextVar("memfit_model_class",
                                                                  default=None)
_HF_DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16",
                   "float": "fp32"}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' advisory warnings (config checks, deprecations) for the trace."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    logging.getLogger("torch._subclasses.fake_tensor").disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        logging.getLogger("torch._subclasses.fake_tensor").disabled = False


def hf_config(config: Mapping[str, Any]) -> Any:
    """The transformers config object for a ``config.json`` dict (``model_type`` required).

    A ``quantization_config`` is dropped: the tracer builds the architecture in the dtype the
    scenario names, it does not run quantization libraries.
    """
    import transformers

    if not isinstance(config, Mapping):
        raise MemfitError.bad_value("config", type(config).__name__, "a config.json object")
    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise MemfitError.bad_value("model_type", model_type, "a transformers model_type")
    cfg.pop("quantization_config", None)
    cfg.pop("auto_map", None)
    try:
        return transformers.AutoConfig.for_model(model_type, **cfg)
    except ValueError as exc:
        raise MemfitError.bad_value("model_type", model_type,
                                    f"a model_type transformers {transformers.__version__} "
                                    "knows") from exc


def config_dtype(config: Mapping[str, Any]) -> str:
    """The config's ``dtype`` (or older ``torch_dtype``) as fp32/fp16/bf16; bf16 if absent."""
    name = config.get("dtype") or config.get("torch_dtype")
    if not name or name == "auto":
        return "bf16"
    return _HF_DTYPE_NAMES.get(str(name).replace("torch.", ""), "bf16")


def dtype_key(name: str) -> str | None:
    """``name`` as fp32/fp16/bf16 (HF spellings accepted), or None if it is none of them."""
    key = _HF_DTYPE_NAMES.get(name.lower(), name.lower())
    return key if key in DTYPES else None


def weights_dtype(config: Mapping[str, Any], weights: str | None) -> str:
    """The inference weight dtype: ``weights`` if given, else the config's; fp32/fp16/bf16."""
    if weights is None:
        return config_dtype(config)
    key = dtype_key(weights)
    if key is None:
        raise MemfitError.bad_value("weights", weights,
                                    "fp32, fp16 or bf16 (the tracer builds unquantized "
                                    "weights only)")
    return key


def build_model(hf_cfg: Any, dtype: torch.dtype, attn: str) -> tuple[Any, str]:
    """``AutoModelForCausalLM.from_config`` in ``dtype``; returns the model and its attention.

    A model transformers cannot run with SDPA (Gemma 2's logit soft-capping) gets eager
    attention, as ``from_pretrained`` picks when no implementation is named. MoE experts keep
    transformers' default ``grouped_mm`` implementation: static shapes (the eager expert loop
    calls ``nonzero()``, which fake tensors cannot answer), and what a GPU run uses for
    prefill and training.
    """
    import transformers

    auto = MODEL_CLASS.get() or transformers.AutoModelForCausalLM
    try:
        return auto.from_config(hf_cfg, attn_implementation=attn, dtype=dtype), attn
    except ValueError as exc:
        if attn == "sdpa" and "scaled_dot_product_attention" in str(exc):
            return auto.from_config(hf_cfg, attn_implementation="eager", dtype=dtype), "eager"
        raise MemfitError.bad_value("model_type", hf_cfg.model_type,
                                    f"a causal LM transformers builds ({exc})") from exc


@contextlib.contextmanager
def decode_experts(model: Any) -> Iterator[None]:
    """What ``generate()`` does for decoding on a GPU: MoE ``grouped_mm`` -> ``batched_mm``.

    The same switch as ``GenerationMixin._optimize_model_for_decode``, whose condition
    ``self.device.type != "cpu"`` holds on the GPU the trace stands for. ``batched_mm``
    gathers each selected expert's weights per token (memory for speed on small inputs).
    """
    original = model.get_experts_implementation()
    switch = "grouped_mm" in original.values()
    if switch:
        model.set_experts_implementation(
            {k: "batched_mm" if v == "grouped_mm" else v for k, v in original.items()})
    try:
        yield
    finally:
        if switch:
            model.set_experts_implementation(original)
