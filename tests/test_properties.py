"""Properties that hold for every catalog model and every scenario (hypothesis).

Each property is an invariant of memory itself, not of memfit's formulas: more tokens never
need less memory, more sharding never needs more per GPU, the shards add up to at least the
whole, recomputation never keeps more activations, the solvers' answers are exact, results
are plain deterministic data. Where a real effect limits a property, the restriction is
stated beside it.

The default run keeps ``max_examples`` modest (200; ``MEMFIT_EXAMPLES`` sets it); ``-m slow``
runs two of the properties ten times longer.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import memfit
from memfit import MemfitError
from memfit.catalog import entry_names, resolve_model
from memfit.memory.activations import ActivationSetup, lora_unsaved_prefix
from memfit.memory.breakdown import Estimate
from memfit.workload import MAX_COUNT

NAMES = entry_names()
SPECS = {name: memfit.load_model(name) for name in NAMES}
# The largest catalog models make training estimates slow to search (fit) and add nothing a
# mid-size model of the same family does not: the solver properties skip them.
SOLVER_NAMES = [n for n in NAMES if memfit.params(n).total_params < 20 * 10**9]

# MEMFIT_EXAMPLES=5000 python -m pytest tests/test_properties.py: a longer hunt.
EXAMPLES = int(os.environ.get("MEMFIT_EXAMPLES", "200"))
FAST = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
SOLVER = settings(FAST, max_examples=max(1, EXAMPLES // 5))
LONG = settings(FAST, max_examples=2000)

WEIGHTS = [None, "bf16", "fp16", "fp32", "fp8-e4m3", "int8", "bnb-nf4", "bnb-nf4-dq",
           "gptq-int4-g128", "awq-int4-g128", "mxfp4", "q4_k_m", "q8_0", "q6_k"]
KV = [None, "bf16", "fp16", "fp32", "fp8", "int8"]
GPUS = [None, "h100", "a100-sxm-40gb", "l4", "rtx-4090", "h200"]


def _estimate(mode: str, model: Any, **options: Any) -> Estimate:
    """The estimate, or the example is rejected (the scenario is invalid for the model: a
    layout that does not divide it, a context past its position table...)."""
    try:
        return (memfit.infer if mode == "infer" else memfit.train)(model, **options)
    except MemfitError:
        assume(False)
        raise AssertionError("unreachable") from None


@st.composite
def infer_options(draw: Any) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(NAMES))
    engine = draw(st.sampled_from(["hf", "hf", "vllm", "llamacpp"]))
    opts: dict[str, Any] = {
        "batch": draw(st.integers(1, 64)),
        "prompt": draw(st.integers(1, 8192)),
        "generate": draw(st.integers(0, 2048)),
        "weights": draw(st.sampled_from(WEIGHTS)),
        "kv_dtype": draw(st.sampled_from(KV)) if engine != "llamacpp" else None,
        "attn": draw(st.sampled_from(["sdpa", "eager"])),
        "logits": draw(st.sampled_from(["last", "all"])),
        "engine": engine,
        "gpu": draw(st.sampled_from(GPUS)),
    }
    if engine != "llamacpp":
        opts["tp"] = draw(st.sampled_from([1, 1, 2, 4, 8]))
        opts["pp"] = draw(st.sampled_from([1, 1, 2, 3]))
    if engine == "llamacpp" and draw(st.booleans()):
        opts["n_gpu_layers"] = draw(st.integers(0, SPECS[name].num_layers + 1))
    if SPECS[name].is_moe and engine != "llamacpp":
        opts["ep"] = draw(st.sampled_from([1, 2]))
    if engine == "vllm" and opts["gpu"] is None:
        opts["gpu"] = "h100"
    return name, opts


@st.composite
def train_options(draw: Any, *, sharding: bool = True) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(NAMES))
    opts: dict[str, Any] = {
        "batch": draw(st.integers(1, 16)),
        "seq": draw(st.sampled_from([1, 7, 128, 512, 1024, 2048, 4096, 8192])),
        "precision": draw(st.sampled_from(["fp32", "bf16-true", "fp16-true", "bf16-mixed",
                                           "fp16-mixed", "bf16-master"])),
        "optimizer": draw(st.sampled_from(["adamw", "adamw-8bit", "sgd", "sgd-momentum",
                                           "adafactor", "lion"])),
        "optimizer_impl": draw(st.sampled_from(["foreach", "fused", "forloop"])),
        "checkpointing": draw(st.sampled_from(["none", "full", "selective"])),
        "attn": draw(st.sampled_from(["sdpa", "eager"])),
        "gpu": draw(st.sampled_from(GPUS)),
    }
    if draw(st.integers(0, 3)) == 0:
        opts["lora_rank"] = draw(st.sampled_from([4, 16, 64]))
        opts["qlora"] = opts["precision"] != "fp32" and draw(st.booleans())
    if sharding:
        opts["dp"] = draw(st.sampled_from([1, 2, 4, 8]))
        kind = draw(st.sampled_from(["ddp", "zero", "fsdp"]))
        if kind == "zero":
            opts["zero"] = draw(st.integers(0, 3))
        elif kind == "fsdp" and opts["dp"] > 1:
            opts["fsdp"] = draw(st.sampled_from(["full", "grad-op", "hybrid"]))
        opts["tp"] = draw(st.sampled_from([1, 1, 2, 4]))
        opts["sp"] = opts["tp"] > 1 and draw(st.booleans())
        opts["pp"] = draw(st.sampled_from([1, 1, 2]))
        opts["microbatches"] = draw(st.sampled_from([1, 2, 4]))
    return name, opts


# -- memory grows with the work --------------------------------------------------------------

@FAST
@given(infer_options(), st.sampled_from(["batch", "prompt", "generate"]), st.integers(1, 4096))
def test_inference_memory_never_decreases_with_tokens(case: Any, axis: str, more: int) -> None:
    """Sliding windows cap the KV cache and vLLM reserves a fixed share of the card: both
    stop the growth, neither reverses it, so the property holds without restriction."""
    name, opts = case
    small = _estimate("infer", name, **opts)
    big = _estimate("infer", name, **{**opts, axis: opts[axis] + more})
    assert big.peak_bytes >= small.peak_bytes
    assert big.total_bytes >= small.total_bytes


@FAST
@given(train_options(), st.sampled_from(["batch", "seq"]), st.integers(1, 4))
def test_training_memory_never_decreases_with_tokens(case: Any, axis: str, factor: int) -> None:
    name, opts = case
    small = _estimate("train", name, **opts)
    bigger = opts[axis] * (factor + 1) if axis == "seq" else opts[axis] + factor
    big = _estimate("train", name, **{**opts, axis: bigger})
    assert big.peak_bytes >= small.peak_bytes
    assert big.total_bytes >= small.total_bytes


# -- sharding --------------------------------------------------------------------------------

def _model_states(e: Estimate) -> int:
    """Per-GPU model states: resident weights, gradients, master weights, optimizer state."""
    terms = {t.name: t.bytes for t in e.terms}
    return sum(terms.get(k, 0) for k in ("weights", "gradients", "master_weights",
                                         "optimizer_state"))


@FAST
@given(train_options(sharding=False), st.sampled_from([2, 4, 8, 64]))
def test_more_zero_sharding_never_raises_model_states(case: Any, dp: int) -> None:
    """ZeRO 0 >= 1 >= 2 >= 3 per GPU (dp > 1). With a mixed recipe ZeRO runs DeepSpeed's
    mixed precision (16-bit weights and gradients, fp32 master: 2 + 2 + 12 bytes) where
    stage 0 is plain autocast (4 + 4 + 8): a different recipe, yet never more per GPU."""
    name, opts = case
    stages = [_model_states(_estimate("train", name, **{**opts, "dp": dp, "zero": z}))
              for z in (0, 1, 2, 3)]
    assert all(a >= b for a, b in zip(stages, stages[1:], strict=False)), stages


@FAST
@given(train_options(sharding=False), st.sampled_from([2, 4, 8]))
def test_fsdp_shards_never_exceed_unsharded(case: Any, dp: int) -> None:
    name, opts = case
    whole = _model_states(_estimate("train", name, **{**opts, "dp": dp}))
    for mode in ("full", "grad-op"):
        assert _model_states(_estimate("train", name, **{**opts, "dp": dp, "fsdp": mode})) \
            <= whole


@FAST
@given(train_options(sharding=False), st.sampled_from([2, 4, 8, 16]), st.integers(0, 3))
def test_zero_shards_add_up_to_at_least_the_whole(case: Any, dp: int, zero: int) -> None:
    """N shards of each model state hold at least the unsharded state (ceil division)."""
    name, opts = case
    one = _estimate("train", name, **{**opts, "dp": 1, "zero": 0})
    sharded = _estimate("train", name, **{**opts, "dp": dp, "zero": zero})
    if opts["precision"].endswith("-mixed") and zero:
        one = _estimate("train", name, **{**opts, "dp": 1, "zero": 1})  # same recipe
    whole = {t.name: t.bytes for t in one.terms}
    part = {t.name: t.bytes for t in sharded.terms}
    for key in ("weights", "gradients", "master_weights", "optimizer_state"):
        assert part.get(key, 0) * dp >= whole.get(key, 0), key


@FAST
@given(infer_options(), st.sampled_from(["tp", "pp"]), st.sampled_from([2, 4, 8]))
def test_inference_shards_add_up_to_at_least_the_whole(case: Any, axis: str, n: int) -> None:
    """tp GPUs hold at least one GPU's weights and KV cache between them (norms, the
    embeddings of tied heads and KV heads are replicated where they cannot split), and each
    holds no more than the one GPU did.

    Restriction: for pp only the second half holds. An estimate reports its most loaded
    stage, the one with the largest total (often the last, with the LM head and the
    logits), which may hold fewer layers than another stage, so its share times pp can be
    less than the whole (gemma-2-2b, pp=4: a 6-layer stage of 7, 7, 6, 6). llama.cpp does
    not model tp/pp (one GPU) and is left out."""
    name, opts = case
    assume(opts["engine"] != "llamacpp")
    base = {**opts, "tp": 1, "pp": 1, "ep": 1, "gpu": None, "engine": "hf"}
    one = _estimate("infer", name, **base)
    split = _estimate("infer", name, **{**base, axis: n})
    w1 = sum(one.extras["weights_by_component"].values())
    wn = sum(split.extras["weights_by_component"].values())
    kv1, kvn = one.extras["kv_bytes_per_token"], split.extras["kv_bytes_per_token"]
    assert wn <= w1 and kvn <= kv1
    if axis == "tp":
        assert wn * n >= w1 - one.extras["weights_by_component"].get("buffers", 0)
        assert kvn * n >= kv1


@FAST
@given(st.sampled_from([n for n in NAMES if SPECS[n].is_moe]), st.sampled_from([2, 4, 8]))
def test_expert_shards_add_up_to_at_least_the_whole(name: str, ep: int) -> None:
    spec = SPECS[name]
    assume(spec.moe is not None and spec.moe.num_experts % ep == 0)
    one = _estimate("infer", name, prompt=16, generate=0)
    split = _estimate("infer", name, prompt=16, generate=0, ep=ep)
    e1 = one.extras["weights_by_component"]["experts"]
    en = split.extras["weights_by_component"]["experts"]
    assert en <= e1 <= en * ep


# -- checkpointing ---------------------------------------------------------------------------

@FAST
@given(train_options())
def test_checkpointing_never_raises_activation_memory(case: Any) -> None:
    """Saved activations: selective >= full and none >= full; the step's peak: full <=
    selective, up to what full checkpointing holds as the recomputed layer's inputs.

    Two real effects restrict it:

    * full checkpointing keeps every layer's input (and the attention masks, inputs of the
      layers it recomputes), and while a layer recomputes its forward in backward its input
      is held beside everything the recomputation saves. When the step peaks at the last
      layer the backward reaches (the gradients accumulated by then outweigh the activations
      still held: short sequences, LoRA, large models on few tokens), full exceeds selective
      by that one input and the masks, T * b_r * h + masks (mixtral-8x7b, tp=4, seq 2048:
      16 MiB on a 47 GiB peak).
    * none is compared with full on saved activations only: without checkpointing
      transformers' training forward builds a DynamicCache (``use_cache``), which its
      checkpointing turns off, and the cache changes what attention saves. With a fused
      q/k/v projection (Phi-3) the cached path saves the cache's contiguous K/V copies where
      the uncached one keeps the fused output's views alive: with SDPA (no S x S to drop)
      selective can even save more than none (phi-3-mini, B=2, seq 1: 17.8 vs 16.3 MB)."""
    name, opts = case
    runs = {c: _estimate("train", name, **{**opts, "checkpointing": c})
            for c in ("none", "selective", "full")}
    kept = {c: e.term("activations/layers_kept").bytes for c, e in runs.items()}
    peaks = {c: e.peak_bytes for c, e in runs.items()}
    assert kept["selective"] >= kept["full"] and kept["none"] >= kept["full"], kept
    full = runs["full"]
    one_input = kept["full"] // full.assumptions["layers_on_rank"]
    shared = full.term("activations/rotary_and_masks")
    masks = (shared.bytes if shared else 0) * opts.get("microbatches", 1)
    # LoRA: without full checkpointing the first layer's input norm saves nothing (the frozen
    # embedding needs no gradient); full checkpointing keeps that layer's input all the same
    lora = opts.get("lora_rank") is not None or opts.get("qlora")
    fp32_stream = opts.get("qlora") or opts.get("precision") in (
        "fp32", "bf16-mixed", "fp16-mixed")  # the residual stream's dtype
    prefix = lora_unsaved_prefix(resolve_model(name)[0], ActivationSetup(
        batch=opts["batch"], seq=opts["seq"], lora=True, tp=opts.get("tp", 1),
        sp=opts.get("sp", False), residual_bytes=4 if fp32_stream else 2)) if lora else 0
    assert peaks["full"] <= peaks["selective"] + one_input + masks + prefix, (
        peaks, one_input, masks, prefix)


# -- the solvers are exact -------------------------------------------------------------------

def _fits(mode: str, model: str, options: dict[str, Any]) -> bool:
    try:
        e = (memfit.infer if mode == "infer" else memfit.train)(model, **options)
    except MemfitError:
        return False
    # fit's predicate (inference._fits): the engine starts / the bytes fit, the request is
    # served as asked and the batch held at once
    return (bool(e.fits) and e.extras.get("fits_concurrently") is not False
            and e.extras.get("serves_request") is not False)


@SOLVER
@given(infer_options(), st.sampled_from(["h100", "a100-sxm-40gb", "l4", "rtx-4090"]))
def test_fit_infer_answers_fit_and_one_more_does_not(case: Any, gpu: str) -> None:
    name, opts = case
    assume(name in SOLVER_NAMES)
    opts = {k: v for k, v in opts.items() if k != "gpu"}
    try:
        result = memfit.fit_infer(name, gpu=gpu, **opts)
    except MemfitError:
        assume(False)
        return
    base = {k: v for k, v in result.options.items()}
    for axis, answer, cap in (("batch", result.max_batch, MAX_COUNT),
                              ("prompt", result.max_prompt, MAX_COUNT)):
        if answer is None:
            assert not _fits("infer", name, {**base, axis: 1})
            continue
        assert _fits("infer", name, {**base, axis: answer}), (axis, answer)
        if answer < cap:
            assert not _fits("infer", name, {**base, axis: answer + 1}), (axis, answer)


@SOLVER
@given(train_options(sharding=False), st.sampled_from(["h100", "a100-sxm-40gb", "h200"]))
def test_fit_train_answers_fit_and_one_more_does_not(case: Any, gpu: str) -> None:
    name, opts = case
    assume(name in SOLVER_NAMES)
    opts = {k: v for k, v in opts.items() if k != "gpu"}
    try:
        result = memfit.fit_train(name, gpu=gpu, gpus=1, max_layouts=1, **opts)
    except MemfitError:
        assume(False)
        return
    base = {**opts, "gpu": gpu}
    for axis, answer in (("batch", result.max_batch), ("seq", result.max_seq)):
        if answer is None:
            assert not _fits("train", name, {**base, axis: 1})
            continue
        assert _fits("train", name, {**base, axis: answer}), (axis, answer)
        if answer < MAX_COUNT:
            assert not _fits("train", name, {**base, axis: answer + 1}), (axis, answer)


# -- results are plain, deterministic data ---------------------------------------------------

def _check_result(e: Estimate) -> None:
    data = e.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON round trip, no tuples or NaN inside
    assert sum(e.components.values()) == e.peak_bytes == data["peak_bytes"]
    assert all(isinstance(v, int) and v >= 0 for v in e.components.values())
    assert e.total_bytes >= e.peak_bytes
    for name in ("weights", "gradients", "optimizer_states", "activations", "kv_cache"):
        assert name in data["components"]
    if e.gpu_memory_bytes is not None:
        # an engine's own refusal (extras["blockers"]) makes it False whatever the bytes
        assert data["fits"] == (e.total_bytes <= e.gpu_memory_bytes
                                and not e.extras.get("blockers"))
    else:
        assert data["fits"] is None
    assert all(math.isfinite(v) for v in data["overheads"].values())


@FAST
@given(infer_options())
def test_inference_results_are_consistent_and_deterministic(case: Any) -> None:
    name, opts = case
    e = _estimate("infer", name, **opts)
    _check_result(e)
    again = memfit.infer(name, **opts)
    fresh = memfit.infer(memfit.from_hf_config(dict(memfit.catalog.get_entry(name).config),
                                               name=name), **opts)
    assert again.to_dict() == e.to_dict() == fresh.to_dict()


@FAST
@given(train_options())
def test_training_results_are_consistent_and_deterministic(case: Any) -> None:
    name, opts = case
    e = _estimate("train", name, **opts)
    _check_result(e)
    again = memfit.train(name, **opts)
    fresh = memfit.train(memfit.from_hf_config(dict(memfit.catalog.get_entry(name).config),
                                               name=name), **opts)
    assert again.to_dict() == e.to_dict() == fresh.to_dict()


# -- longer runs -----------------------------------------------------------------------------

@pytest.mark.slow
@LONG
@given(infer_options(), st.sampled_from(["batch", "prompt", "generate"]), st.integers(1, 10**5))
def test_slow_inference_monotone(case: Any, axis: str, more: int) -> None:
    test_inference_memory_never_decreases_with_tokens.hypothesis.inner_test(case, axis, more)


@pytest.mark.slow
@LONG
@given(train_options())
def test_slow_training_consistent(case: Any) -> None:
    test_training_results_are_consistent_and_deterministic.hypothesis.inner_test(case)
    test_checkpointing_never_raises_activation_memory.hypothesis.inner_test(case)
