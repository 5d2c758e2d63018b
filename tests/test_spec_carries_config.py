"""The model description carries everything the estimators need (STYLE habit 8; the brief:
"no raw config.json travels beside it"): a catalog model named gives the same estimate as the
ModelSpec its config parses to, given alone. Found by a property test: granite-3.0-3b-a800m's
``attention_dropout`` 0.1 changed the backward phase by name only."""

from __future__ import annotations

import json

import pytest

import memfit
from memfit.arch import ModelSpec, from_hf_config
from memfit.catalog import entry_names, get_entry
from memfit.errors import MemfitError

NAMES = entry_names()


def _same(by_name: object, by_spec: object) -> None:
    a = json.dumps(by_name.to_dict(), sort_keys=True, default=str)  # type: ignore[attr-defined]
    b = json.dumps(by_spec.to_dict(), sort_keys=True, default=str)  # type: ignore[attr-defined]
    assert a == b


def _both(fn: object, name: str, **kw: object) -> tuple[object, object]:
    """(by name, by the parsed spec alone): each an estimate, or the error's text."""
    spec = from_hf_config(dict(get_entry(name).config), name=name)
    out = []
    for model in (name, spec):
        try:
            out.append(fn(model, **kw))  # type: ignore[operator]
        except MemfitError as exc:
            out.append(str(exc))
    return out[0], out[1]


# eager attention saves the attention-dropout mask (granite's attention_dropout 0.1)
@pytest.mark.parametrize("opts", [{}, {"attn": "eager"}, {"lora_rank": 8, "seq": 1024}])
@pytest.mark.parametrize("name", NAMES)
def test_train_by_name_equals_train_by_spec(name: str, opts: dict[str, object]) -> None:
    a, b = _both(memfit.train, name, **opts)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        _same(a, b)


@pytest.mark.parametrize("engine", ["hf", "vllm", "sglang"])
@pytest.mark.parametrize("name", NAMES)
def test_infer_by_name_equals_infer_by_spec(name: str, engine: str) -> None:
    a, b = _both(memfit.infer, name, engine=engine)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        _same(a, b)


def test_config_facts_live_in_the_spec() -> None:
    """What the estimators used to read from the config is a ModelSpec field."""
    granite = get_entry("granite-3.0-3b-a800m")
    assert granite.config["attention_dropout"] > 0
    assert granite.spec.dropout == (False, False, True)
    gpt2 = get_entry("gpt2").spec
    assert gpt2.dropout == (True, True, True)  # configuration_gpt2.py: 0.1 each
    assert get_entry("gemma-2-2b").spec.softcap == (True, True)
    assert get_entry("llama-3.1-8b").spec.softcap == (False, False)
    llama = get_entry("llama-3.1-8b")
    assert json.loads(llama.spec.rope_scaling)["rope_type"] == "llama3"
    assert dict(llama.spec.length_keys)["max_position_embeddings"] == 131072
    off = from_hf_config({**get_entry("gemma-2-2b").config, "final_logit_softcapping": None,
                          "use_cache": False})
    assert off.softcap == (True, False) and off.use_cache is False


def test_a_hand_built_spec_gets_the_family_defaults() -> None:
    spec = get_entry("gpt2").spec
    fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
    bare = ModelSpec(**{**fields, "dropout": None, "softcap": None})
    assert bare.dropout == (True, True, True) and bare.softcap == (False, False)
    with pytest.raises(MemfitError, match="dropout"):
        ModelSpec(**{**fields, "dropout": (True,)})
    with pytest.raises(MemfitError, match="length_keys"):
        ModelSpec(**{**fields, "length_keys": (("n_positions", "1024"),)})
