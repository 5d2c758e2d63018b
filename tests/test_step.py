"""The training step as a replay (memfit.step): the sweep, the LoRA targets, the loss parts,
and the knobs memfit refuses. Traced peaks below come from ``memfit trace`` (fake tensors,
torch 2.13, transformers 5, peft 0.21.2) on Llama 3.2 1B cut to 2 layers, batch 1, seq 512."""

from __future__ import annotations

import pytest

from memfit.catalog import get_entry, resolve_model
from memfit.errors import MemfitError
from memfit.step.events import ACTS, GRADS, WEIGHTS, Program, sweep
from memfit.step.knobs import lora_targets
from memfit.training import train


def _llama_2l() -> dict:
    cfg = dict(get_entry("llama-3.2-1b").config)
    cfg["num_hidden_layers"] = 2
    return cfg


# -- the sweep ------------------------------------------------------------------------------

def test_sweep_peak_is_the_first_largest_moment_by_owner() -> None:
    p = Program()
    p.alloc(WEIGHTS, 100)
    p.phase("forward", (WEIGHTS, ACTS))
    p.alloc(ACTS, 50)
    p.free(ACTS, 50)
    p.alloc(ACTS, 50)  # the same total again: the first one stays the peak
    p.phase("backward", (WEIGHTS, GRADS, ACTS))
    p.moment((ACTS, 10), (GRADS, 30))
    p.moment((ACTS, 0), (GRADS, 20))
    (fwd, f), (bwd, b) = sweep(p.ops)
    assert (fwd, f) == ("forward", {"weights": 100, "activations": 50})
    assert bwd == "backward" and b["gradients"] == 30 and b["activations"] == 10


@pytest.mark.parametrize("net,expect", [(-5, 0), (5, 9)])
def test_sweep_repeat_finds_the_run_end_that_peaks(net: int, expect: int) -> None:
    """A run of 10 identical layers: the largest moment is at its first repetition when the
    totals shrink, at its last when they grow; the sweep equals the unrolled program."""
    block = ((ACTS, 40), (ACTS, -40 - 10), (GRADS, 10 + net))
    rolled, unrolled = Program(), Program()
    for p in (rolled, unrolled):
        p.alloc(ACTS, 1000)
        p.phase("backward", (GRADS, ACTS))
    rolled.repeat(block, 10)
    for _ in range(10):
        unrolled.repeat(block, 1)
    assert sweep(rolled.ops) == sweep(unrolled.ops)
    grads = sweep(rolled.ops)[0][1].get("gradients", 0)
    assert grads == expect * (10 + net)


# -- LoRA targets ---------------------------------------------------------------------------

def test_lora_targets_resolve_as_peft_does() -> None:
    spec = resolve_model("llama-3.1-8b")[0]
    assert lora_targets(spec, "peft-default") == {"q", "v"}  # peft's mapping for llama
    assert lora_targets(spec, "all-linear") == {"q", "k", "v", "o", "gate", "up", "down"}
    assert lora_targets(spec, "attention") == {"q", "k", "v", "o"}
    assert lora_targets(spec, "q_proj,down_proj") == {"q", "down"}
    with pytest.raises(MemfitError, match="not in the model: c_attn"):
        lora_targets(spec, "q_proj,c_attn")
    with pytest.raises(MemfitError, match="no default target modules"):
        lora_targets(resolve_model("phi-3-mini-4k")[0], "peft-default")


def test_report_names_the_lora_modules_used() -> None:
    e = train("llama-3.1-8b", lora_rank=16, seq=512, lora_targets="peft-default")
    assert "on q_proj, v_proj (--lora-targets peft-default)" in e.assumptions["lora"]
    every = train("llama-3.1-8b", lora_rank=16, seq=512).assumptions["lora"]
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in every


def test_fewer_lora_targets_hold_less() -> None:
    kw = dict(lora_rank=16, seq=2048, precision="bf16-true")
    peft = train("llama-3.2-3b", lora_targets="peft-default", **kw).peak_bytes
    every = train("llama-3.2-3b", **kw).peak_bytes  # the default: all-linear
    assert peft < every


# (options, traced peak bytes): memfit trace on the 2-layer Llama 3.2 1B, b1 s512
TRACED = [
    (dict(lora_rank=16, lora_targets="peft-default", precision="bf16-true"), 1653969160),
    (dict(lora_rank=16, lora_targets="peft-default", precision="bf16-mixed"), 3170590984),
    (dict(lora_rank=16, lora_targets="peft-default", precision="fp32"), 2542133512),
    (dict(lora_rank=16, lora_targets="attention", precision="bf16-true"), 1673433352),
    (dict(lora_rank=16, lora_targets="q_proj,v_proj,down_proj", precision="bf16-true"),
     1691521288),
    (dict(lora_rank=16, lora_targets="peft-default", precision="bf16-true", checkpointing="full"),
     1567721736),
    (dict(qlora=True, lora_targets="peft-default", precision="bf16-true"), 2118343872),
    (dict(lora_rank=16, lora_targets="all-linear", lora_dropout=0.1, precision="bf16-true"),
     1753583880),
    (dict(lora_rank=16, lora_targets="peft-default", lora_dropout=0.1, precision="bf16-mixed"),
     3172688136),
    (dict(loss="chunked", precision="bf16-true"), 4125188360),
    (dict(loss="chunked", precision="bf16-mixed"), 8250368264),
    (dict(loss="liger", precision="bf16-true"), 4125188360),
    (dict(lora_rank=16, lora_targets="peft-default", loss="chunked", precision="bf16-true"),
     1292804392),
    (dict(lora_rank=16, lora_targets="peft-default", loss="chunked", precision="bf16-mixed"),
     6486913320),
    (dict(lora_rank=8, lora_targets="all-linear", loss="chunked", loss_chunks=4,
          precision="fp32"), 2339992348),
    (dict(lora_rank=16, lora_targets="peft-default", loss="liger", precision="bf16-true"),
     889030920),
    (dict(qlora=True, no_kbit_prepare=True, lora_targets="peft-default", precision="bf16-true"),
     1473449152),
    (dict(qlora=True, no_kbit_prepare=True, lora_targets="all-linear",
          precision="bf16-mixed"), 1515687104),
    (dict(optimizer_in_backward=True, precision="bf16-true"), 3881898248),
    (dict(optimizer_in_backward=True, precision="fp32"), 7763788040),
]


@pytest.mark.parametrize("opts,traced", TRACED, ids=[str(sorted(o.items())) for o, _ in TRACED])
def test_knobs_match_the_tracer(opts: dict, traced: int) -> None:
    e = train(_llama_2l(), batch=1, seq=512, **opts)
    assert abs(e.peak_bytes - traced) <= 0.003 * traced


def test_chunked_and_fused_losses_hold_less_at_the_loss() -> None:
    kw = dict(lora_rank=16, seq=4096, batch=2, precision="bf16-true")
    phases = {loss: {p.name: p.peak_bytes for p in train("llama-3.2-1b", loss=loss,
                                                          **kw).phases}
              for loss in ("hf", "chunked", "liger")}
    assert phases["liger"]["forward"] < phases["chunked"]["forward"] < phases["hf"][
        "forward"]
    assert phases["chunked"]["backward"] < phases["hf"]["backward"]


# -- refused knobs --------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    dict(qlora=True, dora=True), dict(lora_rank=16, lora_experts=True),  # dense: refused
    dict(checkpointing="op-selective", model="deepseek-v2-lite"),
    dict(checkpointing="full", checkpoint_every=2, lora_rank=8),
    dict(optimizer="paged-adamw", dp=2, zero=1),
    dict(dp=2, fsdp="full", fsdp_version=1, precision="bf16-mixed"),
    dict(lora_rank=16, lora_targets="o_proj,down_proj"), dict(qlora=True, loss="liger"),
])
def test_unmodelled_knobs_are_refused_by_name(opts: dict) -> None:
    opts = dict(opts)
    with pytest.raises(MemfitError, match="not modelled yet"):
        train(opts.pop("model", "llama-3.1-8b"), seq=512, **opts)


def test_optimizer_in_backward_never_holds_every_gradient() -> None:
    kw = dict(seq=1024, precision="bf16-true")
    plain, oib = (train("llama-3.1-8b", optimizer_in_backward=v, **kw) for v in (False, True))
    assert oib.peak_bytes < plain.peak_bytes
    step = {p.name: p.components for p in oib.phases}["optimizer"]
    assert step.get("gradients", 0) == 0 and step.get("temporaries", 0) == 0
    with pytest.raises(MemfitError, match="microbatches"):
        train("llama-3.1-8b", optimizer_in_backward=True, microbatches=2)


def test_paged_optimizers_keep_large_states_out_of_the_peak() -> None:
    """bitsandbytes paged AdamW: fp32 m and v (8 bytes per parameter) whatever the recipe,
    no step temporaries; tensors of 1e5 elements or more are paged (unified memory)."""
    kw = dict(lora_rank=64, qlora=True, seq=512, precision="bf16-true", lora_targets="all-linear")
    plain = train("llama-3.1-8b", optimizer_impl="fused", **kw)
    paged = train("llama-3.1-8b", optimizer="paged-adamw", **kw)
    P = plain.assumptions["trainable_params_on_rank"]
    assert plain.components["optimizer_states"] == 8 * P  # peft's fp32 adapters: fp32 m, v
    # every A/B of rank 64 is paged but k_proj's and v_proj's B (1024 x 64 = 65,536 < 1e5
    # elements): 2 per layer x 32 layers keep fp32 m, v on the GPU
    assert paged.components["optimizer_states"] == 8 * (1024 * 64) * 2 * 32
    assert any("unified memory" in n for n in paged.assumptions["notes"])
    assert train("llama-3.1-8b", optimizer="paged-adamw-8bit", **kw).peak_bytes < plain.peak_bytes


def test_activation_offload_keeps_the_layers_saved_tensors_on_the_host() -> None:
    kw = dict(seq=4096, precision="bf16-true", lora_rank=16)
    plain, off = (train("llama-3.1-8b", activation_offload=v, **kw) for v in (False, True))
    assert off.peak_bytes < plain.peak_bytes
    assert any("activation offload" in n for n in off.assumptions["notes"])


def test_dora_saves_each_adapted_output_twice_and_trains_magnitudes() -> None:
    """DoRA (peft use_dora): the base output and the adapter output of every adapted
    projection saved for the magnitude's gradient; one magnitude per output trained."""
    kw = dict(lora_rank=16, seq=2048, precision="bf16-true", lora_targets="q_proj,v_proj")
    lora, dora = (train("llama-3.2-1b", dora=v, **kw) for v in (False, True))
    spec = resolve_model("llama-3.2-1b")[0]
    outs = spec.num_heads * spec.head_dim + spec.num_kv_heads * spec.head_dim  # q, v outputs
    P = dora.assumptions["trainable_params_on_rank"] - lora.assumptions[
        "trainable_params_on_rank"]
    assert P == outs * spec.num_layers
    fwd = {p.name: p.peak_bytes for p in dora.phases}["forward"] - {
        p.name: p.peak_bytes for p in lora.phases}["forward"]
    assert fwd >= 2048 * outs * (2 + 4) * spec.num_layers


def test_lora_on_fused_experts_trains_r_e_in_plus_out_per_tensor() -> None:
    """peft target_parameters (ParamWrapper) on transformers 5's fused expert tensors:
    lora_A (r E x in), lora_B (out x r E) per 3-D tensor, fp32 weights, gradients, AdamW."""
    kw = dict(lora_rank=16, seq=1024, precision="bf16-true", lora_targets="attention",
              checkpointing="full")
    base, exp = (train("qwen3-30b-a3b", lora_experts=v, **kw) for v in (False, True))
    spec = resolve_model("qwen3-30b-a3b")[0]
    m, h = spec.moe, spec.hidden_size
    per_layer = 16 * m.num_experts * ((h + 2 * m.expert_intermediate_size)
                                      + (m.expert_intermediate_size + h))
    added = (exp.assumptions["trainable_params_on_rank"]
             - base.assumptions["trainable_params_on_rank"])
    assert added == per_layer * spec.num_layers


def test_adapter_knobs_need_adapters() -> None:
    with pytest.raises(MemfitError, match="lora-dropout"):
        train("llama-3.1-8b", lora_dropout=0.1)


# -- fit train --------------------------------------------------------------------------------

def test_fit_train_names_the_fewest_gpus_and_takes_the_count_from_the_layout() -> None:
    from memfit.training import fit_train

    r = fit_train("llama-3.1-70b", "h100", seq=4096, fsdp="full")
    assert r.layouts and any("fewest GPUs" in n for n in r.notes)
    fewer = fit_train("llama-3.1-70b", "h100", gpus=r.gpus - 8, seq=4096, fsdp="full")
    assert all(x.offload != "none" for x in fewer.layouts)  # only with offloading
    assert fit_train("llama-3.1-8b", "h100", dp=4, seq=2048).gpus == 4


def test_fit_train_says_which_change_makes_it_fit() -> None:
    from memfit.training import fit_train

    # full fine-tune of an 8B model in bf16-true with foreach AdamW on one 80 GB card: the
    # foreach copy of the state does not fit; the fused implementation or 8-bit state does
    r = fit_train("llama-3.1-8b", "h100", gpus=1, seq=8192, batch=1, precision="bf16-true")
    if not r.layouts:
        assert any(n.startswith("fits with --") for n in r.notes)


# -- issue 16: --loss cce, --transformers 4 ---------------------------------------------------

def test_cce_keeps_less_than_liger_at_the_loss_by_its_saved_tensors() -> None:
    """Cut Cross-Entropy (cut_cross_entropy/cce.py ``LinearCrossEntropyFunction``) against
    Liger's fused linear cross-entropy, at the forward's loss moment, from the two sources:
    Liger keeps ``grad_input`` (T h) and ``grad_weight`` (V h) from its forward and holds the
    hidden state, one chunk's logits and gradient slice (chunk (V + h)), the fp32 loss and
    labels (12 T); CCE saves ``e`` (T h), the fp32 lse and int64 valids over the N = B (S-1)
    shifted labels (12 N) and the fp32 mean logits (4 V), beside ``nonzero``'s transients
    (24 N, less what is not yet allocated) or the fp32 target logits (4 N)."""
    def fwd(loss: str) -> int:
        e = train("llama-3.2-1b", precision="bf16-true", batch=4, seq=2048, loss=loss)
        return next(p.peak_bytes for p in e.phases if p.name == "forward")

    T, h, V, N, b = 4 * 2048, 2048, 128256, 4 * 2047, 2
    chunk = 256  # next_power_of_2(cdiv(T, cdiv(V, h))) = next_power_of_2(131)
    liger = 2 * T * h * b + V * h * b + chunk * (V + h) * b + 12 * T
    cce = T * h * b + 12 * N + 4 * V + max(24 * N - (12 * N + 4 * V), 4 * N)
    assert fwd("liger") - fwd("cce") == liger - cce


@pytest.mark.parametrize("opts", [dict(loss="cce"), dict(loss="cce", precision="fp32")])
def test_cce_needs_a_16_bit_head(opts: dict) -> None:
    """CCE's backward asserts bf16/fp16 ``e`` and ``c`` (cce_backward.py): autocast's fp32
    weights and fp32 training are refused by name."""
    with pytest.raises(MemfitError, match="loss"):
        train("llama-3.2-1b", seq=512, **opts)


def test_transformers_4_quantizes_and_adapts_mixtral_experts_by_module() -> None:
    """transformers 4's Mixtral (modeling_mixtral.py, ``MixtralBlockSparseTop2MLP``: w1, w3
    = Linear(h, I), w2 = Linear(I, h); the router ``gate = Linear(h, E)``): bitsandbytes
    quantizes every expert and the router; peft's all-linear adapts them. transformers 5's
    fused 3-D experts stay 16-bit, upcast to fp32 by prepare_model_for_kbit_training."""
    from memfit.dtypes import tensor_bytes

    kw = dict(qlora=True, precision="bf16-true", seq=512)
    v5 = train("mixtral-8x7b", **kw)
    v4 = train("mixtral-8x7b", transformers=4, **kw)
    L, E, h, I, r = 32, 8, 4096, 14336, 16
    nf4 = 2 * tensor_bytes((I, h), "nf4-dq") + tensor_bytes((h, I), "nf4-dq")
    experts = L * (E * (3 * I * h * 4 - nf4) + (E * h * 4 - tensor_bytes((E, h), "nf4-dq")))
    attn = r * (2 * (h + h) + 2 * (h + 1024))  # q, o; k, v (8 KV heads of 128)
    per_layer = attn + E * 3 * r * (h + I) + r * (h + E)
    assert v4.assumptions["trainable_params_on_rank"] == L * per_layer
    assert v5.assumptions["trainable_params_on_rank"] == L * attn
    adapters = 4 * (L * per_layer - L * attn)  # fp32 adapters
    assert v5.components["weights"] - v4.components["weights"] == experts - adapters
    assert "experts.w1" in v4.assumptions["lora"]
    assert "gate_proj" not in v5.assumptions["lora"]  # Mixtral has no dense MLP


def test_transformers_4_knobs_refused_where_not_modelled() -> None:
    with pytest.raises(MemfitError, match="lora-experts"):
        train("mixtral-8x7b", lora_rank=8, lora_experts=True, transformers=4,
              precision="bf16-true")
    with pytest.raises(MemfitError, match="not modelled yet"):
        train("mixtral-8x7b", qlora=True, transformers=4)  # bf16-mixed: autocast experts
    with pytest.raises(MemfitError, match="lora-targets"):
        train("mixtral-8x7b", lora_rank=8, lora_targets="mlp")  # no dense MLP, fused experts
    dense = dict(lora_rank=8, seq=512)
    assert train("llama-3.2-1b", transformers=4, **dense).peak_bytes == train(
        "llama-3.2-1b", **dense).peak_bytes  # a dense model: the same modules
