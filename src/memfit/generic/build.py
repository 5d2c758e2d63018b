"""The transformers model for any config: which class (head) and a meta-device build.

The class is the config's own ``architectures[0]`` when transformers has it (what
``from_pretrained`` of that checkpoint builds); otherwise the first auto class that maps the
config: image-text-to-text (a vision-language model with its vision tower), causal LM, masked
LM, then the bare model. Needs torch and transformers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from ..errors import MemfitError

__all__ = ["AUTO_ORDER", "GENERATIVE", "load_hf_config", "meta_model", "model_class",
           "refusal"]

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


def refusal(exc: BaseException, model_type: object, what: str,
            config: Mapping[str, Any] | None = None) -> MemfitError:
    """One line for any failure of transformers or torch on a user's config: the field it
    names when it names one (a strict-dataclass validation error, a missing attribute),
    else ``model``; a MemfitError is passed through."""
    if isinstance(exc, MemfitError):
        return exc
    text = " ".join(str(exc).split())[:240]
    named = re.search(r"field '(\w+)'", text)
    if named is None and isinstance(exc, KeyError) and isinstance(config, Mapping):
        key = exc.args[0] if exc.args else None  # a value the model looked up, e.g. hidden_act
        field = next((k for k, v in config.items() if isinstance(v, str) and v == key), None)
        if field is not None and isinstance(key, str):
            return MemfitError.bad_value(field, key[:60], f"{what} (transformers has no such "
                                         f"value for model_type {model_type!r})")
    if isinstance(exc, MemoryError):
        text = "it ran out of memory"
    if named and isinstance(config, Mapping) and named.group(1) in config:
        value = config[named.group(1)]
        shown = value if isinstance(value, (int, float, bool)) or (
            isinstance(value, str) and len(value) <= 60) else type(value).__name__
        return MemfitError.bad_value(named.group(1), shown, f"{what} for model_type "
                                     f"{model_type!r} ({type(exc).__name__}: {text})")
    return MemfitError.bad_value(named.group(1) if named else "model", model_type,
                                 f"{what} ({type(exc).__name__}: {text})")


def load_hf_config(config: Mapping[str, Any]) -> Any:
    """The transformers config object (a copy of ``config`` is read: transformers rewrites
    nested dicts such as ``rope_scaling``); a config it refuses is a :class:`MemfitError`.

    As :func:`memfit.trace.build.hf_config` (quantization and ``auto_map`` dropped), but any
    error of the config class (a strict field validation, a ValueError of its checks) is
    reported as that, not as an unknown model type.
    """
    import transformers

    from ..trace.build import quiet_transformers

    cfg = copy.deepcopy(dict(config))
    model_type = cfg.pop("model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise MemfitError.bad_value("model_type", model_type, "a transformers model_type")
    cfg.pop("quantization_config", None)
    cfg.pop("auto_map", None)
    if model_type not in transformers.CONFIG_MAPPING:
        raise MemfitError.bad_value("model_type", model_type, f"a model_type transformers "
                                    f"{transformers.__version__} knows")
    try:
        with quiet_transformers():
            return transformers.AutoConfig.for_model(model_type, **cfg)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's config is one line
        raise refusal(exc, model_type, "a config transformers reads", config) from None


def meta_model(config: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """``(model, hf_cfg, auto)``: the model built on the meta device (no memory, no init);
    a model of over :data:`memfit.generic.bounds.MAX_PARAMS` parameters is refused."""
    import torch

    from ..trace.build import DTYPES, config_dtype, quiet_transformers
    from .bounds import check_params

    hf_cfg = load_hf_config(config)
    cls, auto = model_class(hf_cfg, config)
    with quiet_transformers(), torch.device("meta"):
        try:
            model = cls._from_config(hf_cfg, dtype=DTYPES[config_dtype(config)])
        except Exception as exc:  # noqa: BLE001 - any failure of the user's config is one line
            raise refusal(exc, hf_cfg.model_type,
                          f"a config transformers builds ({cls.__name__})", config) from None
    check_params(sum(p.numel() for p in model.parameters()), "counted on the meta device")
    return model, hf_cfg, auto
