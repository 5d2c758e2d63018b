"""train() against the tracer (the real transformers code on fake tensors): peak within 1%.

The tracer is the instrument memfit's training model is calibrated against (see
docs/training.md for the full table). A handful of cases run by default, one per effect;
the wider grid is marked slow.
"""

from __future__ import annotations

import pytest

from memfit.catalog import get_entry
from memfit.training import train
from memfit.workload import TrainingOptions

pytest.importorskip("torch")
pytest.importorskip("transformers")

TOLERANCE = 0.01  # the brief asks for 3%; every case here lands well under 1%


def _config(name: str, layers: int | None) -> dict:
    cfg = dict(get_entry(name).config)
    if layers:
        key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
        cfg[key] = layers
        if "layer_types" in cfg:
            cfg["layer_types"] = cfg["layer_types"][:layers]
    return cfg


def _check(name: str, layers: int | None, tolerance: float = TOLERANCE, **options) -> None:
    from memfit.trace import trace_training

    cfg = _config(name, layers)
    traced = trace_training(cfg, TrainingOptions(**options))
    est = train(cfg, **options)
    err = (est.peak_bytes - traced.peak_bytes) / traced.peak_bytes
    assert abs(err) < tolerance, (name, options, err, est.peak_phase.name, traced.peak_phase)


FAST = [
    ("gpt2", 2, dict(batch=4, seq=1024, precision="bf16-mixed", attn="eager")),
    ("qwen2.5-0.5b", 2, dict(batch=4, seq=1024, precision="fp32")),
    ("llama-3.2-1b", 2, dict(batch=4, seq=1024, precision="bf16-true", checkpointing="full")),
    ("smollm2-135m", 4, dict(batch=1, seq=256, precision="bf16-master", optimizer_impl="fused")),
    ("pythia-160m", 2, dict(batch=4, seq=1024, precision="bf16-true")),
    # use_cache (the config default): GPT-2 saves the cache's copies of k and v on top
    ("gpt2", 2, dict(batch=2, seq=1024, precision="bf16-mixed")),
    # LoRA through peft: frozen base, fp32 adapters casting their inputs (16-bit under
    # autocast); QLoRA: NF4 base whose matmuls return fp32 (peft's fp32 embedding), fp32 GQA
    # attention on SDPA's math kernel
    ("llama-3.2-1b", 2, dict(batch=2, seq=1024, precision="bf16-mixed", lora_rank=16)),
    ("llama-3.1-8b", 1, dict(batch=1, seq=1024, precision="bf16-true", qlora=True)),
    # FSDP2 per rank: the root's and each layer's all-gather and reduce-scatter buffers
    ("llama-3.2-1b", 2, dict(batch=2, seq=1024, precision="bf16-mixed", dp=8, fsdp="full")),
]

SLOW = [
    ("gemma-2-2b", 2, dict(batch=2, seq=1024, precision="bf16-true")),
    ("qwen1.5-moe-a2.7b", 2, dict(batch=2, seq=1024, precision="bf16-mixed")),
    ("phi-3-mini-4k", 2, dict(batch=4, seq=1024, precision="fp32", attn="eager")),
    ("qwen3-0.6b", 4, dict(batch=4, seq=1024, precision="bf16-mixed", checkpointing="full")),
    ("gemma-3-1b", 4, dict(batch=4, seq=1024, precision="bf16-mixed")),
    ("olmo-2-7b", 2, dict(batch=4, seq=1024, precision="bf16-true", attn="eager")),
    ("qwen2.5-0.5b", 4, dict(batch=1, seq=256, precision="bf16-true", optimizer="adafactor")),
    ("gpt2", None, dict(batch=1, seq=256, precision="bf16-mixed", optimizer="lion",
                        optimizer_impl="forloop")),
    ("llama-3.2-1b", 2, dict(batch=4, seq=1024, precision="bf16-master", microbatches=2)),
    ("deepseek-v2-lite", 2, dict(batch=2, seq=1024, precision="bf16-true")),
    ("gpt-oss-20b", 2, dict(batch=2, seq=1024, precision="bf16-true")),
    # eager at long sequences: the softmax's backward after the MLP's and o_proj's
    ("mistral-7b-v0.1", 2, dict(batch=2, seq=4096, precision="bf16-true", attn="eager")),
    # fp32 with grouped KV heads: SDPA's math kernel
    ("llama-3.2-1b", 2, dict(batch=2, seq=2048, precision="fp32")),
    # MLA: the fused kernel (SDPA) and eager
    ("deepseek-v2-lite", 1, dict(batch=4, seq=2048, precision="bf16-true")),
    ("deepseek-v2-lite", 1, dict(batch=4, seq=2048, precision="bf16-true", attn="eager")),
    # bf16-master's gradient casts before a step with few temporaries
    ("tinyllama-1.1b", 2, dict(batch=1, seq=1024, precision="bf16-master",
                               optimizer="sgd-momentum", optimizer_impl="forloop")),
    ("llama-3.1-8b", 2, dict(batch=1, seq=2048, precision="bf16-true", lora_rank=8)),
    ("llama-3.1-8b", 2, dict(batch=2, seq=1024, precision="bf16-true", lora_rank=16,
                             checkpointing="full")),
    ("llama-3.1-8b", 2, dict(batch=1, seq=1024, precision="bf16-mixed", qlora=True)),
    ("llama-3.1-8b", 2, dict(batch=1, seq=1024, precision="bf16-mixed", qlora=True,
                             checkpointing="full")),
    ("mistral-7b-v0.1", 2, dict(batch=1, seq=2048, precision="bf16-true", qlora=True)),
    ("llama-3.1-8b", 2, dict(batch=1, seq=1024, precision="fp32", dp=4, fsdp="grad-op")),
    ("llama-3.1-8b", 2, dict(batch=1, seq=1024, precision="bf16-true", dp=8, fsdp="full",
                             microbatches=2)),
    # -1.05% (known, 2026-12-07): the SwiGLU product freed before d(act)/d(up), which made
    # the suite's 108 cases exact, leaves this 2-layer FSDP2 grad-op + recompute backward
    # 112 MiB low (was +0.42% before that rule); held to 1.5% until the recompute's moment
    # is re-derived op by op
    ("mistral-7b-v0.1", 2, dict(batch=2, seq=2048, precision="bf16-mixed", dp=2,
                                fsdp="grad-op", checkpointing="full", tolerance=0.015)),
    # 60 experts on 8 ranks: FSDP2 pads each tensor's dim 0 to a multiple of the ranks
    ("qwen1.5-moe-a2.7b", 2, dict(batch=1, seq=1024, precision="bf16-mixed", dp=8,
                                  fsdp="full")),
    ("gpt2", None, dict(batch=4, seq=1024, precision="bf16-mixed", dp=2, fsdp="full")),
    # LoRA under FSDP2: the frozen base all-gathered, only the adapters reduce-scattered
    ("llama-3.1-8b", 2, dict(batch=2, seq=2048, precision="bf16-mixed", dp=8, fsdp="full",
                             lora_rank=16, checkpointing="full")),
    ("llama-3.2-1b", 2, dict(batch=2, seq=1024, precision="fp32", dp=2, fsdp="grad-op",
                             lora_rank=8)),
]


@pytest.mark.parametrize("name,layers,options", FAST, ids=lambda x: str(x))
def test_train_matches_tracer(name, layers, options):
    _check(name, layers, **options)


@pytest.mark.slow
@pytest.mark.parametrize("name,layers,options", SLOW, ids=lambda x: str(x))
def test_train_matches_tracer_wide(name, layers, options):
    _check(name, layers, **options)
