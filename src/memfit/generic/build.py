"""The transformers model for any config: which class (head) and a meta-device build.

The class is the config's own ``architectures[0]`` when transformers has it (what
``from_pretrained`` of that checkpoint builds); otherwise the first auto class that maps the
config: image-text-to-text (a vision-language model with its vision tower), causal LM, masked
LM, then the bare model. Needs torch and transformers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..errors import MemfitError

__all__ = ["AUTO_ORDER", "GENERATIVE", "load_hf_config", "meta_model", "model_class"]

#: Auto classes tried in order when the config names no transformers class.
AUTO_ORDER = ("AutoModelForImageTextToText", "AutoModelForSeq2SeqLM",
              "AutoModelForSpeechSeq2Seq", "AutoModelForCausalLM", "AutoModelForMaskedLM",
              "AutoModel")
#: Encoder-decoder models use the sequence-to-sequence classes; encoders (``is_decoder``
#: false) their masked-LM head before transformers' causal-LM variant (``BertLMHeadModel``).
_SEQ2SEQ = ("AutoModelForSeq2SeqLM", "AutoModelForSpeechSeq2Seq")
#: Auto classes whose models ``generate()`` (the tracer's inference and causal-LM training).
GENERATIVE = ("AutoModelForImageTextToText", "AutoModelForCausalLM")


def model_class(hf_cfg: Any, config: Mapping[str, Any]) -> tuple[Any, str]:
    """The model class for ``hf_cfg`` and the auto class that maps it ("" when named).

    Returns ``(cls, auto_name)``; ``auto_name`` is the first of :data:`GENERATIVE` that maps
    the config to ``cls`` when one does, so callers can tell whether it generates.
    """
    import transformers

    mapped: dict[str, Any] = {}
    for auto in AUTO_ORDER:
        mapping = getattr(transformers, auto)._model_mapping
        try:
            mapped[auto] = mapping[type(hf_cfg)]
        except KeyError:
            continue
    names = config.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str) and hasattr(
            transformers, names[0]):
        cls = getattr(transformers, names[0])
        auto = next((a for a in GENERATIVE if mapped.get(a) is cls), "")
        if not auto and names[0].endswith(("ForCausalLM", "ForConditionalGeneration")):
            auto = "named"
        return cls, auto
    order = [a for a in AUTO_ORDER if a in mapped and (
        a not in _SEQ2SEQ or getattr(hf_cfg, "is_encoder_decoder", False))]
    masked, causal = "AutoModelForMaskedLM", "AutoModelForCausalLM"
    if masked in order and causal in order and not getattr(hf_cfg, "is_decoder", False):
        order.remove(masked)
        order.insert(order.index(causal), masked)
    for auto in order:
        return mapped[auto], auto if auto in GENERATIVE else ""
    raise MemfitError.bad_value("model_type", hf_cfg.model_type,
                                "a model_type transformers can build a model for")


def load_hf_config(config: Mapping[str, Any]) -> Any:
    """The transformers config object (a copy of ``config`` is read: transformers rewrites
    nested dicts such as ``rope_scaling``); a config it refuses is a :class:`MemfitError`."""
    from ..trace.build import hf_config, quiet_transformers

    try:
        with quiet_transformers():
            return hf_config(copy.deepcopy(dict(config)))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, MemfitError):
            raise
        raise MemfitError.bad_value("model_type", config.get("model_type"),
                                    f"a config transformers reads ({type(exc).__name__}: "
                                    f"{str(exc)[:200]})") from exc


def meta_model(config: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """``(model, hf_cfg, auto)``: the model built on the meta device (no memory, no init)."""
    import torch

    from ..trace.build import DTYPES, config_dtype, quiet_transformers

    hf_cfg = load_hf_config(config)
    cls, auto = model_class(hf_cfg, config)
    with quiet_transformers(), torch.device("meta"):
        try:
            model = cls._from_config(hf_cfg, dtype=DTYPES[config_dtype(config)])
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise MemfitError.bad_value("model", hf_cfg.model_type,
                                        f"a config transformers builds ({cls.__name__}: "
                                        f"{exc})") from exc
    return model, hf_cfg, auto
