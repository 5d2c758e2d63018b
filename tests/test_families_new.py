"""Families added in issue 17 (granite, granitemoe): exact parameters, and the analytical
estimate checked against a live trace of a tiny config of each (the independent value).

Families whose activations memfit's analytical profiles do not describe yet (starcoder2,
gpt_bigcode, glm4, cohere, phimoe, falcon, llama4...) go through the generic path instead
(``tests/test_generic.py``, ``docs/architectures.md``).
"""

from __future__ import annotations

import pytest

import memfit
from memfit.arch import FAMILIES, from_hf_config
from memfit.memory.params import buffer_elements, count_params
from memfit.workload import InferenceOptions, TrainingOptions
from tests.conftest import hf_counts

SMALL = dict(num_hidden_layers=6, hidden_size=64, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300)
# Granite's multipliers as in ibm-granite/granite-3.1-8b-instruct's config.json (they scale
# activations, never sizes), with its attention dropout.
GRANITE = dict(embedding_multiplier=12.0, residual_multiplier=0.22,
               attention_multiplier=0.0078125, logits_scaling=16.0, attention_dropout=0.1)

CONFIGS = {
    "granite": dict(SMALL, model_type="granite", **GRANITE),
    "granite-tied-biases": dict(SMALL, model_type="granite", tie_word_embeddings=True,
                                attention_bias=True, mlp_bias=True),
    "granitemoe": dict(SMALL, model_type="granitemoe", num_local_experts=4,
                       num_experts_per_tok=2, tie_word_embeddings=True, **GRANITE),
}

SCENARIOS = [
    InferenceOptions(batch=2, prompt=64, generate=8),
    pytest.param(TrainingOptions(batch=2, seq=64), marks=pytest.mark.slow),
    pytest.param(TrainingOptions(batch=2, seq=64, checkpointing="full"), marks=pytest.mark.slow),
    pytest.param(TrainingOptions(batch=1, seq=64, precision="bf16-true"),
                 marks=pytest.mark.slow),
]


def test_families_registered():
    assert {"granite", "granitemoe"} <= set(FAMILIES)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_params_equal_transformers(name):
    cfg = CONFIGS[name]
    spec = from_hf_config(cfg)
    params, buffers = hf_counts(cfg)
    assert count_params(spec).total == params
    assert buffer_elements(spec) == buffers


def test_granitemoe_active_params():
    spec = from_hf_config(CONFIGS["granitemoe"])
    c = count_params(spec)
    assert c.active == c.total - c.experts + c.experts * 2 // 4


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("options", SCENARIOS, ids=lambda o: f"{type(o).__name__[:5]}"
                         f"-{getattr(o, 'checkpointing', '')}{getattr(o, 'precision', '')}")
def test_estimate_matches_live_trace(name, options):
    """The analytical estimate within 0.5% of the tracer on the same tiny config."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from memfit.trace import trace_inference, trace_training

    cfg = CONFIGS[name]
    if isinstance(options, InferenceOptions):
        est, traced = memfit.infer(cfg, **vars(options)), trace_inference(cfg, options)
    else:
        est, traced = memfit.train(cfg, **vars(options)), trace_training(cfg, options)
    assert abs(est.peak_bytes - traced.peak_bytes) <= 0.005 * traced.peak_bytes, (
        est.peak_bytes, traced.peak_bytes)
