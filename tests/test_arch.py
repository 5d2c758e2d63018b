"""The config.json adapter: per-family semantics and clear errors for bad configs."""

from __future__ import annotations

import json

import pytest

from memfit import MemfitError, load_model
from memfit.arch import FAMILIES, LayerSpec, ModelSpec, from_hf_config
from memfit.memory.params import count_params

from .configs.families import FAMILY_CONFIGS, SMALL


def test_explicit_head_dim_wins() -> None:
    spec = from_hf_config(dict(SMALL, model_type="llama", head_dim=24))
    assert spec.head_dim == 24 and spec.q_dim == 96


def test_qwen2_has_qkv_bias_that_config_never_states() -> None:
    spec = from_hf_config(dict(SMALL, model_type="qwen2"))
    assert spec.qkv_bias and not spec.o_bias


def test_attention_kinds() -> None:
    def kind(kv_heads: int) -> str:
        cfg = dict(SMALL, model_type="llama", num_key_value_heads=kv_heads)
        return from_hf_config(cfg).attention_kind

    assert kind(4) == "mha"
    assert kind(1) == "mqa"
    assert from_hf_config(dict(SMALL, model_type="llama")).attention_kind == "gqa"
    assert load_model("deepseek-v3").attention_kind == "mla"


def test_sliding_layouts() -> None:
    gemma2 = load_model("gemma-2-9b")
    assert [x.attention for x in gemma2.layers[:4]] == ["sliding", "full", "sliding", "full"]
    assert gemma2.layers[0].window == 4096
    gemma3 = from_hf_config(FAMILY_CONFIGS["gemma3_text"])
    assert [x.attention for x in gemma3.layers] == ["sliding"] * 5 + ["full", "sliding"]
    qwen = from_hf_config(FAMILY_CONFIGS["qwen2-tied-sliding"])
    assert [x.attention for x in qwen.layers] == ["full", "sliding", "sliding"]
    # Qwen's sliding_window counts only with use_sliding_window.
    assert all(x.attention == "full" for x in load_model("qwen2.5-7b").layers)
    mistral = load_model("mistral-7b-v0.1")
    assert all(x.attention == "sliding" and x.window == 4096 for x in mistral.layers)
    oss = load_model("gpt-oss-20b")
    assert {x.attention for x in oss.layers} == {"sliding", "full"}


def test_moe_layer_placement() -> None:
    qwen = from_hf_config(FAMILY_CONFIGS["qwen2_moe"])  # step 2, layer 0 dense-only
    assert [x.moe for x in qwen.layers] == [False, True, False]
    ds = load_model("deepseek-v3")
    assert ds.num_dense_layers == 3 and ds.num_moe_layers == 58
    assert ds.moe.num_experts == 256 and ds.moe.top_k == 8


def test_active_params_of_moe() -> None:
    counts = count_params(load_model("qwen3-30b-a3b"))
    assert round(counts.total / 1e9, 1) == 30.5
    assert 3.3e9 <= counts.active < 3.4e9  # the card: "3.3B activated" (truncated)


def test_multimodal_text_config_is_read() -> None:
    inner = dict(SMALL, model_type="gemma3_text", head_dim=16)
    spec = from_hf_config({"model_type": "gemma3", "text_config": inner})
    assert spec.model_type == "gemma3_text"


def test_custom_model_round_trips() -> None:
    spec = load_model("mixtral-8x7b")
    data = dict(spec.to_dict(), model_type="custom")
    again = from_hf_config(json.loads(json.dumps(data)))
    assert count_params(again) == count_params(spec)


@pytest.mark.parametrize("bad, field", [
    ({"model_type": "bert"}, "model_type"),
    ({}, "model_type"),
    (dict(SMALL, model_type="llama", num_key_value_heads=3), "num_key_value_heads"),
    (dict(SMALL, model_type="llama", hidden_size=-64), "hidden_size"),
    (dict(SMALL, model_type="llama", hidden_size=66), "hidden_size"),
    (dict(SMALL, model_type="llama", num_hidden_layers=0), "num_hidden_layers"),
    (dict(SMALL, model_type="llama", vocab_size="big"), "vocab_size"),
    (dict(SMALL, model_type="llama", tie_word_embeddings="yes"), "tie_word_embeddings"),
    (dict(SMALL, model_type="mixtral", num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(SMALL, model_type="gemma2", layer_types=["full_attention"]), "layer_types"),
    ({"model_type": "custom", "wings": 2}, "wings"),
])
def test_bad_configs_name_the_field(bad: dict, field: str) -> None:
    with pytest.raises(MemfitError) as info:
        from_hf_config(bad)
    assert field in str(info.value)


def test_unknown_model_type_lists_supported() -> None:
    with pytest.raises(MemfitError) as info:
        from_hf_config({"model_type": "bert"})
    for family in FAMILIES:
        assert family in str(info.value)


def test_modelspec_checks_itself() -> None:
    with pytest.raises(MemfitError):
        ModelSpec(name="x", model_type="custom", num_layers=2, hidden_size=8, vocab_size=8,
                  num_heads=2, num_kv_heads=2, head_dim=4, intermediate_size=8,
                  layers=(LayerSpec(),))


def test_memfit_error_is_value_error() -> None:
    assert issubclass(MemfitError, ValueError)
