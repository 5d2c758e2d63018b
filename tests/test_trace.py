"""The tracer, proved: the fake-tensor trace equals the same run on real CPU tensors to the
byte, for every family and scenario; the real run equals the CPU allocator's own peak; the
CUDA emulations behave as the probe on a GPU found (``validation/cuda_probe.json``).

Fake vs real: both runs execute the same code, one on ``FakeTensorMode`` tensors (shapes only),
one on real CPU tensors; every number of the result (peak, rounded peak, peak phase, the
components at the peak, every phase's peak) must be equal. Tiny models (3 layers, hidden 64)
keep the real runs fast; the prompt (12) crosses the sliding windows (8) of the configs that
have one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memfit.errors import MemfitError  # noqa: E402
from memfit.trace import COMPONENTS, TraceResult, trace_inference, trace_training  # noqa: E402
from memfit.trace import run as trace_run  # noqa: E402
from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

from .configs.families import FAMILY_CONFIGS  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """The real runs are tiny: one intra-op thread is faster than two that spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def runnable(config: dict[str, Any]) -> dict[str, Any]:
    """A family config the model can run, not only count.

    The parameter-count configs give MLA models (DeepSeek V2/V3) 2 KV heads for 4 query heads;
    MLA attention has one KV head per query head and cannot run that, so use 4.
    """
    if "kv_lora_rank" in config:
        return dict(config, num_key_value_heads=config["num_attention_heads"])
    return config


FAMILIES = {name: runnable(cfg) for name, cfg in FAMILY_CONFIGS.items()}
LLAMA = FAMILIES["llama"]
#: One of each kind for the fast suite: dense GQA, tied embeddings + sliding window, logit
#: soft-capping (eager only), MoE with grouped_mm, MLA + MoE, GPT-2 (dropout 0.1, gelu_new).
#: Every family runs in the slow suite.
SOME = ["llama", "qwen2-tied-sliding", "gemma2", "mixtral", "deepseek_v3", "gpt2"]


def family_params(some: list[str] = SOME) -> list[Any]:
    """Every family; those not in ``some`` marked slow."""
    return [pytest.param(f, marks=() if f in some else pytest.mark.slow)
            for f in sorted(FAMILIES)]


def signature(r: TraceResult) -> tuple[Any, ...]:
    return (r.peak_bytes, r.peak_bytes_rounded, r.peak_phase, dict(r.components),
            dict(r.phase_peaks))


def assert_fake_equals_real(fake: TraceResult, real: TraceResult) -> None:
    assert fake.device_kind == "fake" and real.device_kind == "real"
    assert signature(fake) == signature(real)
    assert sum(fake.components.values()) == fake.peak_bytes
    assert set(COMPONENTS) <= set(fake.components)


# -- fake == real ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", family_params())
def test_inference_fake_equals_real_every_family(family: str) -> None:
    """Prefill + 5 decode steps; fake with the fast decode, real running every step."""
    options = InferenceOptions(batch=2, prompt=12, generate=5)
    fake = trace_inference(FAMILIES[family], options)
    real = trace_run.trace_inference(FAMILIES[family], options, device_kind="real",
                                     fast_decode=False)
    assert_fake_equals_real(fake, real)
    assert fake.components["weights"] > 0 and fake.phase_peaks["decode"] > 0


VARIANTS = {
    "eager-all-g9": InferenceOptions(batch=3, prompt=10, generate=9, attn="eager", logits="all"),
    "sdpa-all-g0": InferenceOptions(batch=1, prompt=20, generate=0, logits="all"),
    "fp32-g2": InferenceOptions(batch=2, prompt=5, generate=2, weights="fp32"),
}


@pytest.mark.parametrize("family,variant", [
    pytest.param(f, v, marks=() if f == "llama" or v == "eager-all-g9" else pytest.mark.slow)
    for f in ("llama", "mistral", "qwen3_moe", "gemma3_text", "deepseek_v3", "gpt2")
    for v in VARIANTS])
def test_inference_variants_fake_equals_real(family: str, variant: str) -> None:
    options = VARIANTS[variant]
    fake = trace_inference(FAMILIES[family], options)
    real = trace_run.trace_inference(FAMILIES[family], options, device_kind="real",
                                     fast_decode=False)
    assert_fake_equals_real(fake, real)


@pytest.mark.parametrize("family", family_params())
def test_training_fake_equals_real_every_family(family: str) -> None:
    """bf16-mixed (the contract's default, with the CUDA autocast emulation) and full
    checkpointing (the recomputation runs inside backward)."""
    options = TrainingOptions(batch=2, seq=16, checkpointing="full")
    fake = trace_training(FAMILIES[family], options)
    real = trace_training(FAMILIES[family], options, device_kind="real")
    assert_fake_equals_real(fake, real)


TRAIN_MATRIX = [
    ("fp32", "forloop", "full"),
    ("bf16-true", "fused", "none"),
    ("fp16-true", "forloop", "none"),
    ("bf16-mixed", "fused", "none"),
    ("fp16-mixed", "foreach", "full"),
    ("bf16-master", "foreach", "none"),
    ("bf16-master", "fused", "full"),
    *(pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("fp32", "foreach", "none"), ("bf16-true", "foreach", "full"),
        ("bf16-master", "forloop", "none"), ("bf16-mixed", "forloop", "full")]),
]


@pytest.mark.parametrize("precision,impl,ckpt", TRAIN_MATRIX)
def test_training_recipes_fake_equals_real(precision: str, impl: str, ckpt: str) -> None:
    options = TrainingOptions(batch=2, seq=16, precision=precision, optimizer_impl=impl,
                              checkpointing=ckpt, attn="eager" if impl == "forloop" else "sdpa")
    fake = trace_training(LLAMA, options)
    real = trace_training(LLAMA, options, device_kind="real")
    assert_fake_equals_real(fake, real)


@pytest.mark.parametrize("optimizer,impl", [
    ("sgd", "foreach"), ("sgd-momentum", "fused"), ("sgd-momentum", "forloop"),
    ("adafactor", "foreach"), ("adafactor", "forloop"), ("lion", "foreach"),
    ("lion", "forloop"),
])
def test_optimizers_fake_equals_real(optimizer: str, impl: str) -> None:
    options = TrainingOptions(batch=2, seq=16, precision="bf16-true", optimizer=optimizer,
                              optimizer_impl=impl)
    fake = trace_training(LLAMA, options)
    real = trace_training(LLAMA, options, device_kind="real")
    assert_fake_equals_real(fake, real)


@pytest.mark.parametrize("family", [
    "mixtral", *(pytest.param(f, marks=pytest.mark.slow)
                 for f in ("deepseek_v2-lite", "qwen2_moe", "gpt_oss"))])
def test_moe_fp32_training_fake_equals_real(family: str) -> None:
    """fp32 experts: the meta kernel of ``_grouped_mm`` takes bf16 only, the tracer's
    override allocates what the CPU kernel allocates."""
    options = TrainingOptions(batch=2, seq=16, precision="fp32", microbatches=2)
    fake = trace_training(FAMILIES[family], options)
    real = trace_training(FAMILIES[family], options, device_kind="real")
    assert_fake_equals_real(fake, real)


@pytest.mark.parametrize("family,prompt,generate", [
    pytest.param(f, p, g, marks=() if f in ("llama", "qwen2-tied-sliding") or (
        f == "mixtral" and g == 14) else pytest.mark.slow)
    for f in ("llama", "qwen2-tied-sliding", "mixtral", "mistral", "gemma2", "deepseek_v2-lite")
    for p, g in ((4, 14), (12, 3), (30, 7))])
def test_fast_decode_equals_every_step(family: str, prompt: int, generate: int) -> None:
    """Growing the cache between the first and last decode step changes nothing measured,
    also where the cache crosses a sliding window (8) on the way."""
    options = InferenceOptions(batch=2, prompt=prompt, generate=generate)
    fast = trace_run.trace_inference(FAMILIES[family], options, fast_decode=True)
    full = trace_run.trace_inference(FAMILIES[family], options, fast_decode=False)
    assert signature(fast) == signature(full)
    assert fast.ops < full.ops or generate < 3


# -- the real run against the CPU allocator ------------------------------------------------------
def allocator_peak(fn: Any) -> tuple[Any, int]:
    """Run ``fn`` under ``torch.profiler`` (profile_memory) and replay its allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return result, peak


@pytest.mark.parametrize("attn,weights", [("sdpa", "fp32"), ("eager", "bf16"),
                                           ("sdpa", "bf16")])
def test_inference_equals_cpu_allocator_peak(attn: str, weights: str) -> None:
    """The CPU allocator's own peak over the whole real run, build included, is the tracker's
    peak exactly when every allocation is a tensor storage. The one exception found: CPU
    flash attention in 16 bits allocates fp32 scratch per thread inside the kernel (a kernel
    workspace, like cuBLAS's on a GPU), which no dispatch mode can see. With the one thread
    these tests use it does not reach the peak (equal); with two threads it added 34,432
    bytes (1.9%) to this peak, so the bound allows 3%."""
    config = dict(LLAMA, hidden_size=128, intermediate_size=256, vocab_size=512)
    result, peak = allocator_peak(lambda: trace_run.trace_inference(
        config, InferenceOptions(batch=4, prompt=48, generate=4, attn=attn, weights=weights),
        device_kind="real", fast_decode=False))
    if (attn, weights) == ("sdpa", "bf16"):
        assert 0 <= peak - result.peak_bytes < 0.03 * result.peak_bytes
    else:
        assert peak == result.peak_bytes


def test_training_close_to_cpu_allocator_peak() -> None:
    """Training: the allocator also holds the optimizer's ``step`` counters (4 bytes per
    parameter tensor), which a GPU run keeps in host memory and the tracker leaves out. The
    two peaks agree to that: 0 <= allocator - tracker <= 4 x parameter tensors."""
    config = dict(LLAMA, hidden_size=128, intermediate_size=256, vocab_size=512)
    result, peak = allocator_peak(lambda: trace_training(
        config, TrainingOptions(batch=4, seq=48, precision="fp32"), device_kind="real"))
    n_tensors = 3 * 9 + 3  # per layer: q k v o gate up down + 2 norms; embed, lm_head, norm
    assert 0 <= peak - result.peak_bytes <= 4 * n_tensors


# -- what the components hold -----------------------------------------------------------------
def param_bytes(config: dict[str, Any], itemsize: int) -> tuple[int, int]:
    """(parameter bytes, buffer bytes) of transformers' model for ``config`` (meta device)."""
    from .conftest import hf_meta_model

    model = hf_meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return n_params * itemsize, sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("family", ["llama", "llama-mha-tied", "mixtral", "gpt2"])
def test_inference_weights_are_the_parameters(family: str) -> None:
    r = trace_inference(FAMILIES[family], InferenceOptions(batch=1, prompt=8, generate=1))
    p, b = param_bytes(FAMILIES[family], 2)  # bf16: the default when the config names none
    assert r.components["weights"] == p + b
    assert r.scenario["resolved"]["weights"] == "bf16"


def test_training_states_at_an_optimizer_peak_fp32_adamw() -> None:
    """A tiny model peaks in the optimizer step (foreach AdamW): fp32 weights W, gradients W,
    exp_avg + exp_avg_sq 2W, and foreach's scratch list (the sqrt of exp_avg_sq) W."""
    r = trace_training(LLAMA, TrainingOptions(batch=1, seq=8, precision="fp32"))
    w, buffers = param_bytes(LLAMA, 4)
    assert r.peak_phase == "optimizer"
    c = r.components
    assert (c["weights"], c["gradients"], c["optimizer_states"], c["temporaries"]) == (
        w + buffers, w, 2 * w, w)
    assert c["kv_cache"] == 0 and c["activations"] == r.peak_bytes - sum(
        c[k] for k in COMPONENTS if k != "activations")


def test_training_states_at_an_optimizer_peak_bf16_master() -> None:
    """bf16-master: 16-bit weights (2 B/param), fp32 master copy + AdamW state in fp32
    (12 B/param, the ZeRO paper's K=12) and fp32 gradients of the masters (4 B/param)."""
    r = trace_training(LLAMA, TrainingOptions(batch=1, seq=8, precision="bf16-master"))
    w2, buffers = param_bytes(LLAMA, 2)
    c = r.components
    assert r.peak_phase == "optimizer"
    assert c["weights"] == w2 + buffers
    assert c["optimizer_states"] == 6 * w2
    assert c["gradients"] == 2 * w2


def test_logits_last_vs_all() -> None:
    """``--logits all`` computes batch x prompt x vocab logits where ``last`` computes
    batch x vocab: with a big vocabulary they are live at the peak, and raise it."""
    config = dict(LLAMA, vocab_size=8192)
    last = trace_inference(config, InferenceOptions(batch=2, prompt=64, generate=0))
    full = trace_inference(config, InferenceOptions(batch=2, prompt=64, generate=0,
                                                    logits="all"))
    assert full.components["logits"] == 2 * 64 * 8192 * 2  # at the peak, in bf16
    assert full.peak_bytes > last.peak_bytes + 2 * 64 * 8192 * 2 // 2


# -- the CUDA emulations ------------------------------------------------------------------------
def test_gpu_semantics_dropout_keeps_a_bool_mask() -> None:
    from memfit.trace.compat import gpu_semantics

    x = torch.randn(4, 8, requires_grad=True)
    with gpu_semantics():
        y = torch.nn.functional.dropout(x, 0.1, training=True)
    assert type(y.grad_fn).__name__ == "NativeDropoutBackward0"
    assert torch.nn.functional.dropout.__module__ == "torch.nn.functional"  # restored


def test_gpu_semantics_fp32_gqa_sdpa_is_the_math_kernel() -> None:
    """No fused CUDA kernel takes fp32 with grouped KV heads (probe: MATH on H100)."""
    from memfit.trace.compat import gpu_semantics

    q = torch.randn(1, 4, 16, 8, requires_grad=True)
    kv = torch.randn(1, 2, 16, 8)
    with gpu_semantics():
        out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True,
                                                               enable_gqa=True)
        bf16 = torch.nn.functional.scaled_dot_product_attention(
            q.bfloat16(), kv.bfloat16(), kv.bfloat16(), is_causal=True, enable_gqa=True)
    assert "Flash" not in type(out.grad_fn).__name__
    assert "Flash" in type(bf16.grad_fn).__name__


def test_gpu_semantics_mla_sdpa_is_a_fused_kernel() -> None:
    """d_qk != d_v (DeepSeek's MLA): CPU SDPA has only its math kernel (S x S scores); CUDA's
    memory-efficient kernel takes it (ATen's ``check_head_dim_size_mem_efficient`` asks only
    for q/k equal and aligned). The tracer's stand-in allocates a fused kernel's output and
    fp32 log-sum-exp, and computes the same values as SDPA, forward and backward."""
    from memfit.trace.compat import gpu_semantics

    q, k = (torch.randn(2, 4, 16, 24, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 4, 16, 16, requires_grad=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with gpu_semantics():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = sdpa(q, k, v, is_causal=True)
    assert "memfit_fused_attention" in out.grad_fn.name()
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    for mine, theirs in zip(torch.autograd.grad(out, (q, k, v), grad),
                            torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_cuda_autocast_policy_matches_the_gpu_probe() -> None:
    """The dtypes CPU autocast gives with the tracer's emulation are the dtypes CUDA autocast
    gave on an H100 (``validation/cuda_probe.json``, every op probed)."""
    from pathlib import Path

    probe = Path(__file__).resolve().parents[1] / "validation" / "cuda_probe.py"
    sys.path.insert(0, str(probe.parent))
    try:
        import cuda_probe  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(probe.parent))
    saved = json.loads(probe.with_suffix(".json").read_text())["autocast"]["device"]
    assert cuda_probe.autocast_dtypes("cpu", emulate=True) == saved
    assert cuda_probe.autocast_dtypes("cpu", emulate=False) != saved  # CPU's own lists differ


# -- results and errors -------------------------------------------------------------------------
def test_to_dict_is_the_contract_json() -> None:
    r = trace_inference(LLAMA, InferenceOptions(batch=1, prompt=4, generate=2))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["total_bytes"] == d["peak_bytes"] == r.peak_bytes
    assert d["fits"] is None
    assert sum(d["components"].values()) == d["peak_bytes"]
    assert {"weights", "gradients", "optimizer_states", "activations", "kv_cache"} <= set(
        d["components"])
    assert d["scenario"]["prompt"] == 4 and d["scenario"]["workload"] == "infer"
    assert set(d["versions"]) >= {"torch", "transformers"}
    assert d["peak_bytes_rounded"] >= d["peak_bytes"] and d["peak_bytes_rounded"] % 512 == 0


@pytest.mark.parametrize("call,field", [
    (lambda: trace_training(LLAMA, TrainingOptions(checkpointing="selective")),
     "checkpointing"),
    (lambda: trace_training(LLAMA, TrainingOptions(qlora=True, precision="fp16-true")),
     "precision"),
    (lambda: trace_training(LLAMA, TrainingOptions(dp=2)), "dp"),
    (lambda: trace_training(LLAMA, TrainingOptions(dp=2, zero=2)), "dp"),
    (lambda: trace_training(LLAMA, TrainingOptions(fsdp="full")), "fsdp"),
    (lambda: trace_training(LLAMA, TrainingOptions(optimizer="adafactor",
                                                   optimizer_impl="fused")), "optimizer-impl"),
    (lambda: trace_inference(LLAMA, InferenceOptions(tp=2)), "tp"),
    (lambda: trace_inference(LLAMA, InferenceOptions(engine="vllm")), "engine"),
    (lambda: trace_inference(LLAMA, InferenceOptions(weights="int8")), "weights"),
    (lambda: trace_inference(LLAMA, InferenceOptions(kv_dtype="fp8")), "kv-dtype"),
    (lambda: trace_inference(dict(LLAMA, model_type="no-such-model"), InferenceOptions()),
     "model_type"),
    (lambda: trace_inference(LLAMA, InferenceOptions(), device_kind="cuda"), "device_kind"),
])
def test_unsupported_inputs_raise_memfit_error(call: Any, field: str) -> None:
    with pytest.raises(MemfitError) as info:
        call()
    assert info.value.field == field


def test_adamw_8bit_needs_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(MemfitError, match="bitsandbytes"):
            trace_training(LLAMA, TrainingOptions(optimizer="adamw-8bit"))
    else:
        pytest.skip("bitsandbytes is installed")


def test_importing_memfit_trace_does_not_import_torch() -> None:
    code = "import sys, memfit.trace; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- full-size models (slow) -------------------------------------------------------------------
def catalog_config(name: str) -> dict[str, Any]:
    from memfit.catalog import get_entry

    try:
        return dict(get_entry(name).config)
    except MemfitError:
        pytest.skip(f"catalog has no {name}")


@pytest.mark.slow
def test_llama2_7b_training_step_traces_in_under_30s() -> None:
    config = catalog_config("llama-2-7b")
    r = trace_training(config, TrainingOptions(batch=1, seq=2048, precision="bf16-true"))
    assert r.seconds < 30
    w, buffers = param_bytes(config, 2)
    assert r.components["weights"] == w + buffers
    assert r.components["optimizer_states"] == 2 * w


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-2-70b", "mixtral-8x7b"])
def test_large_models_trace(name: str) -> None:
    config = catalog_config(name)
    r = trace_training(config, TrainingOptions(batch=1, seq=2048, precision="bf16-true"))
    w, buffers = param_bytes(config, 2)
    assert r.components["weights"] == w + buffers
    i = trace_inference(config, InferenceOptions(batch=1, prompt=2048, generate=128))
    assert i.components["weights"] == w + buffers
    assert i.seconds < 60


@pytest.mark.slow
def test_fake_traces_of_a_7b_model_stay_small_in_host_memory() -> None:
    """Fake tensors hold no data: tracing a 7B model with every optimizer must not touch
    gigabytes of host memory (FakeTensorMode's fallback once materialised every parameter
    for fused SGD; the tracer now refuses that fallback)."""
    code = """
import resource, sys
from memfit.catalog import get_entry
from memfit.trace import trace_training
from memfit.workload import TrainingOptions
config = dict(get_entry("llama-2-7b").config, num_hidden_layers=4)
for optimizer, impl in [("adamw", "fused"), ("sgd-momentum", "fused"), ("adafactor", "foreach"),
                        ("lion", "foreach"), ("adamw", "foreach")]:
    trace_training(config, TrainingOptions(batch=1, seq=1024, optimizer=optimizer,
                                           optimizer_impl=impl))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    max_rss_bytes = int(out.stdout.split()[-1]) * 1024
    assert max_rss_bytes < 2 * 2**30  # the 4-layer model's fp32 weights alone: 4 GiB


# -- issue 16: loss, checkpoint policy, offloading, optimizer in backward --------------------

STEP_KNOBS = [
    {"loss": "chunked", "loss_chunks": 4}, {"loss": "liger"},
    {"loss": "liger", "precision": "bf16-true"},
    {"checkpointing": "op-selective"}, {"checkpointing": "full", "checkpoint_every": 2},
    {"activation_offload": True}, {"optimizer_in_backward": True},
]
SLOW_STEP_KNOBS = [
    {"loss": "chunked", "loss_chunks": 3, "precision": "bf16-true"},
    {"loss": "liger", "checkpointing": "full"},
    {"checkpointing": "op-selective", "precision": "bf16-true", "checkpoint_every": 2},
    {"activation_offload": True, "checkpointing": "full"},
    {"activation_offload": True, "precision": "bf16-true", "loss": "chunked"},
    {"optimizer_in_backward": True, "optimizer_impl": "fused", "precision": "bf16-true"},
    {"optimizer_in_backward": True, "optimizer": "sgd-momentum", "optimizer_impl": "forloop"},
]


@pytest.mark.parametrize("kw", STEP_KNOBS + [pytest.param(k, marks=pytest.mark.slow)
                                             for k in SLOW_STEP_KNOBS])
def test_step_knobs_fake_equal_real(kw: dict[str, Any]) -> None:
    options = TrainingOptions(batch=2, seq=16, **kw)
    fake = trace_training(LLAMA, options)
    assert_fake_equals_real(fake, trace_training(LLAMA, options, device_kind="real"))


@pytest.mark.parametrize("family", ["qwen2-tied-sliding", "gemma2", "mixtral"])
def test_losses_and_op_sac_other_families_fake_equal_real(family: str) -> None:
    for kw in ({"loss": "chunked"}, {"loss": "liger"}, {"checkpointing": "op-selective"}):
        options = TrainingOptions(batch=2, seq=16, precision="bf16-true", **kw)
        fake = trace_training(FAMILIES[family], options)
        assert_fake_equals_real(fake, trace_training(FAMILIES[family], options,
                                                     device_kind="real"))


def _wide() -> dict[str, Any]:
    """Llama with a vocabulary large enough that the logits dominate the forward."""
    return dict(LLAMA, vocab_size=4096)


def test_chunked_and_fused_losses_hold_less_than_hf() -> None:
    base = {"batch": 2, "seq": 64, "precision": "bf16-true"}
    hf = trace_training(_wide(), TrainingOptions(**base))
    chunked = trace_training(_wide(), TrainingOptions(**base, loss="chunked"))
    fused = trace_training(_wide(), TrainingOptions(**base, loss="liger"))
    b, s, v = 2, 64, 4096
    # hf keeps the bf16 logits' fp32 copy's log-softmax, chunked one fp32 log-softmax per
    # chunk (all of them), fused none: only the bf16 chunks (chunked) or grad_input (fused)
    assert fused.phase_peaks["forward"] < chunked.phase_peaks["forward"] < \
        hf.phase_peaks["forward"]
    assert hf.phase_peaks["forward"] - chunked.phase_peaks["forward"] >= 4 * b * s * v // 2
    assert fused.components["logits"] == 0


def test_fused_linear_chunk_size_is_ligers() -> None:
    from memfit.trace.loss import liger_chunk_size

    # Liger's own example: BT = 4096*4, V = 32000, H = 4096 -> chunk_size = 2048
    assert liger_chunk_size(4096 * 4, 4096, 32000) == 2048
    assert liger_chunk_size(100, 4096, 32000) == 16  # next power of 2 of cdiv(100, 8)
    assert liger_chunk_size(3, 4096, 1000) == 3      # never more than BT


def _phase(kw: dict[str, Any]) -> int:
    r = trace_training(LLAMA, TrainingOptions(batch=2, seq=64, precision="bf16-true", **kw))
    return r.phase_peaks["forward"]


def test_op_selective_saves_between_full_and_none() -> None:
    none, full = _phase({}), _phase({"checkpointing": "full"})
    op = _phase({"checkpointing": "op-selective"})
    every2 = _phase({"checkpointing": "full", "checkpoint_every": 2})
    assert full < op < none
    assert full < every2 < none


def test_op_sac_policy_saves_every_other_mm() -> None:
    from torch.utils.checkpoint import CheckpointPolicy

    from memfit.trace.ckpt import op_sac_context_fn

    mm = torch.ops.aten.mm.default
    fwd, _recompute = op_sac_context_fn(set())()
    policy = fwd.policy_fn
    ctx = type("Ctx", (), {"is_recompute": False})()
    a = torch.zeros(2, 2)
    got = [policy(ctx, mm, a, a) for _ in range(4)]
    assert got == [CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE] * 2
    assert policy(ctx, torch.ops.aten.add.Tensor, a, a) == CheckpointPolicy.PREFER_RECOMPUTE
    router = op_sac_context_fn({(2, 2)})()[0].policy_fn
    assert router(ctx, mm, a, a) == CheckpointPolicy.PREFER_RECOMPUTE


def test_activation_offload_keeps_host_copies_out_of_the_count() -> None:
    plain = _phase({})
    offloaded = _phase({"activation_offload": True})
    assert offloaded < plain


def test_optimizer_in_backward_never_holds_all_gradients() -> None:
    base = {"batch": 2, "seq": 16, "precision": "bf16-true"}
    plain = trace_training(LLAMA, TrainingOptions(**base))
    oib = trace_training(LLAMA, TrainingOptions(**base, optimizer_in_backward=True))
    assert oib.components["optimizer_states"] == plain.components["optimizer_states"] or \
        oib.peak_phase == "backward"
    largest = max(p.numel() for p in _llama_params()) * 2
    assert oib.components["gradients"] <= 2 * largest  # one (or two, in flight) at a time
    assert oib.peak_bytes < plain.peak_bytes
    assert "in backward" in oib.scenario["resolved"]["optimizer_class"]


def _llama_params() -> list[Any]:
    from tests.conftest import hf_meta_model

    return list(hf_meta_model(LLAMA).parameters())


@pytest.mark.parametrize(("kw", "field"), [
    ({"optimizer": "paged-adamw", "dp": 2, "fsdp": "full"}, "optimizer"),
    ({"optimizer": "adamw-8bit", "optimizer_impl": "fused"}, "optimizer-impl"),
    ({"checkpointing": "selective"}, "checkpointing"),
    ({"checkpoint_every": 2}, "checkpoint-every"),
    ({"loss_chunks": 4}, "loss-chunks"),
    ({"fsdp_version": 1}, "fsdp-version"),
    ({"optimizer_in_backward": True, "microbatches": 2}, "microbatches"),
    ({"optimizer_in_backward": True, "precision": "bf16-master"}, "precision"),
    ({"loss": "chunked", "dp": 2, "fsdp": "full"}, "loss"),
    ({"activation_offload": True, "dp": 2, "fsdp": "full"}, "activation-offload"),
    ({"offload": "params", "dp": 2, "fsdp": "full"}, "offload"),
])
def test_untraced_step_knobs_raise(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(MemfitError, match=field):
        trace_training(LLAMA, TrainingOptions(batch=2, seq=16, **kw))


@pytest.mark.parametrize("optimizer", ["paged-adamw-8bit", "paged-adamw"])
def test_paged_optimizers_keep_large_states_out_of_the_count(optimizer: str) -> None:
    """bitsandbytes' rule: state buffers of tensors of 1e5 elements or more are paged (unified
    memory, not counted); smaller ones are ordinary device tensors."""
    pytest.importorskip("bitsandbytes")
    config = dict(LLAMA, hidden_size=256, intermediate_size=512, vocab_size=512)
    options = TrainingOptions(batch=2, seq=16, precision="bf16-true", optimizer=optimizer)
    fake = trace_training(config, options)
    real = trace_training(config, options, device_kind="real")
    if optimizer == "paged-adamw-8bit":
        assert_fake_equals_real(fake, real)
    else:  # bitsandbytes' CPU 32-bit update allocates 128 bytes its fake kernel does not
        assert abs(fake.peak_bytes - real.peak_bytes) <= 256
    unpaged = "adamw-8bit" if optimizer.endswith("8bit") else "adamw"
    full = trace_training(config, TrainingOptions(batch=2, seq=16, precision="bf16-true",
                                                  optimizer=unpaged))
    assert fake.components["optimizer_states"] < full.components["optimizer_states"]
    from tests.conftest import hf_meta_model

    small = sum(p.numel() for p in hf_meta_model(config).parameters() if p.numel() < 100_000)
    if optimizer == "paged-adamw":  # two fp32 states per small tensor stay on the device
        assert fake.components["optimizer_states"] == 2 * 4 * small
