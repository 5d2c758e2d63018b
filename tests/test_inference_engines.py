"""Engines (vLLM, llama.cpp) and the published numbers memfit is checked against.

Published cases (see docs/inference.md for the derivations and the gaps):

* vLLM, Llama-2-7B fp16, one A100-80GB, gpu_memory_utilization=0.9: "# GPU blocks: 7351"
  (blocks of 16 tokens). memfit: 7450 (+1.3%); tolerance 3%.
* vLLM, Llama-2-70B fp16, TP=4 on A100-80GB: 20865 blocks. memfit: ~31,700: the published
  run left ~14 GiB per GPU outside weights, profiled activations and KV that memfit cannot
  attribute (version and flags unknown); the test pins memfit's own figure and the gap.
* FastChat, Llama-2-7B fp16 on an RTX 3090: nvidia-smi 13213 MiB after loading. memfit's
  weights + CUDA context: 13548 MiB (+2.5%); its total adds the overhead model's allocator
  slack (11% of the peak, measured on activation-heavy runs) and the cuBLAS workspace and lands
  at ~14994 MiB (+13.5%).
* llama.cpp, Mistral-Small 22B, 49152 context, 57/57 layers on the GPU: model buffer
  17295 MiB (Q6_K with Q8_0 output: bartowski's Q6_K_L), KV 5712 MiB (q8_0 cache), compute
  192 MiB. memfit: 17295.4 / 5712.0 / 192.0 MiB.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from memfit.arch import from_hf_config
from memfit.catalog import get_entry
from memfit.engines import vllm_derived_max_len
from memfit.errors import MemfitError
from memfit.inference import fit_infer, infer
from memfit.memory.weights import model_weights, resolve_weights_option
from memfit.report import render_estimate

MiB = 2**20


# ------------------------------------------------------------------------------------------
# vLLM
# ------------------------------------------------------------------------------------------

def test_vllm_llama2_7b_a100_blocks() -> None:
    # the published run is an old vLLM (graphs outside the budget): model 0.12's accounting
    e = infer("llama-2-7b", engine="vllm", gpu="a100-80gb", gpu_memory_utilization=0.9,
              prompt=1024, generate=1024, vllm_version="0.12")
    blocks = e.extras["kv_cache_blocks"]
    assert abs(blocks - 7351) / 7351 <= 0.03, blocks
    assert e.extras["kv_cache_tokens"] == 16 * blocks
    assert e.extras["kv_block_bytes"] == 16 * 32 * 2 * 4096 * 2  # 8 MiB per block
    # sequences of 2048 tokens held at once: floor(blocks / 128); vLLM's own concurrency is
    # at max_model_len 4096: blocks / 256
    assert e.extras["scenario_concurrency"] == blocks // 128
    assert e.extras["max_concurrency"] == round(blocks / 256, 2)
    assert e.extras["starts"] is True and e.fits is True


def test_vllm_llama2_70b_tp4_blocks_gap_is_documented() -> None:
    e = infer("llama-2-70b", engine="vllm", gpu="a100-80gb", gpu_memory_utilization=0.9, tp=4,
              vllm_version="0.12")
    blocks = e.extras["kv_cache_blocks"]
    # one block per GPU: 16 tokens x 80 layers x 2 x (8/4 KV heads) x 128 x 2 B = 1.25 MiB
    assert e.extras["kv_block_bytes"] == 16 * 80 * 2 * 2 * 128 * 2
    # memfit's own figure (weights 32.1 GiB per GPU, ~0.2 GiB profiled activations)
    assert 30500 <= blocks <= 32000
    assert 1.45 <= blocks / 20865 <= 1.55  # the unexplained gap, docs/inference.md


def test_vllm_gpt_oss_20b_a100_published_log() -> None:
    # vLLM 0.19, A100-80GB, u=0.65: "Available KV cache memory: 36.56 GiB"; memfit +4.0%
    # (its MXFP4 weights are 0.9 GiB below vLLM's "Model loading took 13.72 GiB")
    e = infer("gpt-oss-20b", engine="vllm", gpu="a100-80gb", gpu_memory_utilization=0.65,
              vllm_version="0.12")
    kv = e.extras["available_kv_bytes"] / 2**30
    assert 0 < (kv - 36.56) / 36.56 <= 0.05, kv
    assert e.assumptions["weights_source"] == "quantization_config"
    assert abs(e.components["weights"] / 2**30 - 13.72) / 13.72 <= 0.07


def test_vllm_pool_fills_the_reservation() -> None:
    for version in ("0.12", "0.21"):
        e = infer("llama-3.1-8b", engine="vllm", gpu="h100", vllm_version=version)
        reserved = e.extras["requested_bytes"]
        # weights + activations + non-torch (+ 0.21's graphs) + KV pool fill u * (total - drv)
        inside = e.overheads["cuda_graphs"] if version == "0.21" else 0
        used = e.peak_bytes + e.overheads["non_torch"] + inside
        assert 0 <= reserved - used < e.extras["kv_block_bytes"]
        assert e.components["kv_cache"] == e.extras["kv_cache_blocks"] * e.extras["kv_block_bytes"]


def test_vllm_graph_memory_moved_inside_the_budget_in_0_21() -> None:
    old = infer("llama-3.1-8b", engine="vllm", gpu="h100", vllm_version="0.12")
    new = infer("llama-3.1-8b", engine="vllm", gpu="h100", vllm_version="0.21")
    graphs = new.extras["cuda_graph_bytes"]
    assert graphs == old.extras["cuda_graph_bytes"] > 0
    assert old.extras["available_kv_bytes"] - new.extras["available_kv_bytes"] == graphs
    eager = [infer("llama-3.1-8b", engine="vllm", gpu="h100", vllm_version=v,
                   enforce_eager=True) for v in ("0.12", "0.21")]
    assert eager[0].extras["kv_cache_blocks"] == eager[1].extras["kv_cache_blocks"]
    assert eager[0].extras["cuda_graph_bytes"] == 0 and "cuda_graphs" not in eager[0].overheads


@pytest.mark.parametrize("gpu,entry,tokens,seqs", [
    ("h100", "serve", 8192, 1024), ("h100", "llm", 16384, 1024), ("h200", "serve", 8192, 1024),
    ("a100-80gb", "serve", 2048, 256), ("a100-80gb", "llm", 8192, 256),
    ("l4", "serve", 2048, 256), ("rtx-4090", "llm", 8192, 256)])
def test_vllm_batch_defaults_by_gpu_and_entry_point(gpu, entry, tokens, seqs) -> None:
    # vllm/engine/arg_utils.py get_batch_defaults: >= 70 GiB and not an A100 -> the large set
    e = infer("llama-3.2-1b", engine="vllm", gpu=gpu, vllm_entrypoint=entry)
    assert (e.extras["max_num_batched_tokens"], e.extras["max_num_seqs"]) == (tokens, seqs)
    o = infer("llama-3.2-1b", engine="vllm", gpu=gpu, max_num_batched_tokens=512,
              max_num_seqs=8)
    assert (o.extras["max_num_batched_tokens"], o.extras["max_num_seqs"]) == (512, 8)
    assert o.extras["profile_activation_bytes"] < e.extras["profile_activation_bytes"]


def test_vllm_non_torch_memory_grows_with_tp() -> None:
    nt = {tp: infer("llama-3.1-70b", engine="vllm", gpu="h100", tp=tp,
                    max_model_len=8192).extras["non_torch_bytes"] for tp in (1, 2, 4, 8)}
    assert nt[1] < nt[2] < nt[4] == nt[8]  # a ring has two peers at most
    assert nt[2] - nt[1] == 432 * MiB


@pytest.mark.parametrize("model,limit", [
    ("llama-3.1-8b", 131072),   # rope_type llama3: not scaled again
    ("deepseek-v3", 163840),    # yarn: original 4096 x factor 40
    ("gpt-oss-20b", 131072),    # yarn: original 4096 x factor 32
    ("gemma-3-27b", 131072),    # Gemma 3's limit is already scaled
    ("phi-3.5-mini", 131072),   # longrope: not scaled
    ("mistral-7b-v0.1", 32768),
])
def test_vllm_derived_max_model_len(model, limit) -> None:
    entry = get_entry(model)
    assert vllm_derived_max_len(entry.spec) == limit


def test_vllm_derived_max_len_scales_linear_rope() -> None:
    entry = get_entry("llama-3.2-1b")
    cfg = {**entry.config, "max_position_embeddings": 4096,
           "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert vllm_derived_max_len(from_hf_config(cfg)) == 8192
    bare = replace(entry.spec, length_keys=(), rope_scaling="")
    assert vllm_derived_max_len(bare) == entry.spec.max_position_embeddings


def test_vllm_does_not_start_on_l4_and_names_the_max_model_len_that_does() -> None:
    # the issue's case: Llama-3.1-8B's 131,072 context does not fit an L4's KV pool
    e = infer("llama-3.1-8b", engine="vllm", gpu="l4")
    assert e.extras["starts"] is False and e.fits is False
    n = e.extras["largest_max_model_len"]
    assert 20_000 < n < e.extras["kv_cache_tokens"] + 16
    assert infer("llama-3.1-8b", engine="vllm", gpu="l4", max_model_len=n).extras["starts"]
    assert not infer("llama-3.1-8b", engine="vllm", gpu="l4",
                     max_model_len=n + 16).extras["starts"]
    text = render_estimate(e)
    assert "DOES NOT START" in text and f"--max-model-len {n}" in text
    assert "FITS" not in text.replace("DOES NOT FIT", "")


def test_vllm_zero_sequences_never_fits() -> None:
    # Llama-3.1-70B, TP=2, 32k prompt, A100-80GB: vLLM does not start at max_model_len 131072
    e = infer("llama-3.1-70b", engine="vllm", tp=2, prompt=32768, gpu="a100")
    assert e.fits is False and e.extras["starts"] is False
    assert e.to_dict()["fits"] is False
    r = fit_infer("llama-3.1-70b", "a100", engine="vllm", tp=2, prompt=32768, gpus=2)
    assert r.fits is False
    # the pool holds 28,144 tokens: no max_model_len serves 32k; 16k starts, and a batch
    # beyond the pool is said in the verdict
    assert e.extras["largest_max_model_len"] < 32768 + 128
    ok = infer("llama-3.1-70b", engine="vllm", tp=2, prompt=8192, gpu="a100",
               max_model_len=16384)
    assert ok.extras["starts"] is True and ok.fits is True
    big = infer("llama-3.1-70b", engine="vllm", tp=2, prompt=8192, gpu="a100",
                max_model_len=16384, batch=ok.extras["scenario_concurrency"] + 1)
    # fits == starts (issue 15): the batch beyond the pool is queued, said under the verdict,
    # and `fit`'s largest batch stops before it
    assert big.fits is True and big.extras["starts"] is True
    assert big.extras["serves_request"] is False and big.extras["fits_concurrently"] is False
    assert "fewer than the batch" in render_estimate(big)
    r16 = fit_infer("llama-3.1-70b", "a100", engine="vllm", tp=2, prompt=8192, gpus=2,
                    max_model_len=16384)
    assert r16.max_batch == ok.extras["scenario_concurrency"]


def test_vllm_refuses_a_request_beyond_max_model_len() -> None:
    e = infer("llama-3.1-8b", engine="vllm", gpu="h100", max_model_len=4096, prompt=4000,
              generate=128)
    assert e.extras["starts"] is True and e.fits is True  # fits == starts
    assert any("rejects the request" in b for b in e.extras["warnings"])
    assert "rejects the request" in " ".join(render_estimate(e).split())
    above = infer("llama-3.1-8b", engine="vllm", gpu="h100", max_model_len=200_000)
    assert above.fits is False and above.extras["starts"] is False


@pytest.mark.parametrize("kw", [
    dict(model="llama-3.1-8b", gpu="l4"), dict(model="llama-3.1-8b", gpu="h100", batch=64),
    dict(model="llama-3.1-70b", gpu="a100", tp=2, prompt=32768),
    dict(model="qwen2.5-7b", gpu="rtx-4090", max_model_len=16384)])
def test_vllm_infer_and_fit_agree(kw) -> None:
    model = kw.pop("model")
    gpu = kw.pop("gpu")
    e = infer(model, engine="vllm", gpu=gpu, **kw)
    r = fit_infer(model, gpu, engine="vllm", gpus=kw.get("tp", 1), **kw)
    assert r.fits == e.fits


def test_vllm_mla_caches_the_latent_once() -> None:
    e = infer("deepseek-v2-lite", engine="vllm", gpu="h100")
    spec = get_entry("deepseek-v2-lite").spec
    assert e.extras["kv_bytes_per_token"] == spec.num_layers * (512 + 64) * 2


def test_vllm_without_gpu_sizes_the_scenario() -> None:
    e = infer("llama-3.1-8b", engine="vllm", batch=4, prompt=1000, generate=24)
    # 4 sequences x ceil(1024 / 16) blocks x 2 MiB per block
    assert e.components["kv_cache"] == 4 * 64 * (16 * 32 * 2 * 8 * 128 * 2)
    assert "kv_cache_blocks" not in e.extras


def test_vllm_fit_reports_capacity() -> None:
    r = fit_infer("llama-3.1-8b", "h100", engine="vllm", prompt=8192, generate=0)
    assert r.kv_cache_tokens is not None and r.kv_cache_tokens > 300_000
    assert r.max_batch == r.max_concurrency == r.kv_cache_blocks // 512


def test_vllm_deepseek_v3_fp8_tp8_h200_starts() -> None:
    # the checkpoint's FP8 (128x128 blocks), not bf16: ~79.5 GiB of weights per GPU
    e = infer("deepseek-v3", engine="vllm", tp=8, gpu="h200")
    assert e.assumptions["weights"] == "fp8-block"
    assert 78 * 2**30 < e.components["weights"] < 81 * 2**30
    assert e.extras["starts"] is True and e.fits is True


# ------------------------------------------------------------------------------------------
# Weights as the checkpoint ships them
# ------------------------------------------------------------------------------------------

def test_gpt_oss_checkpoint_sizes_match_the_model_card() -> None:
    # OpenAI's gpt-oss model card: checkpoints of 60.8 GiB (120b) and 12.8 GiB (20b)
    for model, gib in (("gpt-oss-120b", 60.8), ("gpt-oss-20b", 12.8)):
        e = infer(model)
        assert e.assumptions["weights"] == "mxfp4"
        assert abs(e.components["weights"] / 2**30 - gib) / gib < 0.002, model
    e = infer("gpt-oss-120b", gpu="h100")
    assert e.fits is True  # the case: 217 GiB in bf16, ~61 GiB as shipped
    assert not infer("gpt-oss-120b", gpu="h100", weights="bf16").fits  # --weights overrides


def test_deepseek_v3_fp8_block_scales() -> None:
    entry = get_entry("deepseek-v3")
    rw = resolve_weights_option(entry.spec, None, "vllm")
    assert rw.name == "fp8-block" and rw.source == "quantization_config"
    w = model_weights(entry.spec, rw).total
    # 671B main model (the MTP module is not built): fp8 values + one fp32 scale per 128x128
    # tile; embeddings, LM head, norms, router in 16/32 bits
    assert 672e9 < w < 675e9


@pytest.mark.parametrize("q,name", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq-int4-g128"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "gptq-int8-g128"),
    ({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True}, "awq-int4-g64"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_use_double_quant": True}, "bnb-nf4-dq"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bnb-int8"),
    ({"quant_method": "fp8"}, "fp8-e4m3"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128],
      "modules_to_not_convert": ["model.layers.*.self_attn"]}, "fp8-block+attention-16bit"),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 8, "type": "float", "strategy": "channel"}}}, "ignore": ["lm_head"]},
     "fp8-channel"),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {
        "num_bits": 4, "type": "int", "strategy": "group", "group_size": 128,
        "symmetric": True}}}}, "int-ct-int4-g128"),
])
def test_quantization_config_formats(q, name) -> None:
    entry = get_entry("llama-3.1-8b")
    cfg = {**entry.config, "quantization_config": q}
    e = infer(cfg, engine="vllm")
    assert e.assumptions["weights"] == name
    assert e.assumptions["weights_source"] == "quantization_config"
    bf16 = infer(cfg, engine="vllm", weights="bf16").components["weights"]
    assert e.components["weights"] < bf16


def test_unknown_quant_method_is_refused_by_name() -> None:
    cfg = {**get_entry("llama-3.2-1b").config, "quantization_config": {"quant_method": "hqq"}}
    with pytest.raises(MemfitError) as err:
        infer(cfg)
    assert err.value.field == "quantization_config.quant_method"


# ------------------------------------------------------------------------------------------
# llama.cpp
# ------------------------------------------------------------------------------------------

def test_llamacpp_mistral_small_published_buffers() -> None:
    e = infer("mistral-small-22b", engine="llamacpp", weights="Q6_K_L", kv_dtype="q8_0",
              prompt=49152, generate=0, n_gpu_layers=57)
    assert abs(e.extras["gpu_weights_mib"] - 17295) <= 1
    assert abs(e.extras["kv_cache_mib"] - 5712) <= 1
    assert abs(e.extras["compute_buffer_mib"] - 192) <= 0.05 * 192
    # the token embeddings stay on the CPU
    assert e.host_bytes == 32768 * 6144 * 34 // 32


def test_llamacpp_plain_q6_k_differs_by_the_output_layer() -> None:
    q6 = infer("mistral-small-22b", engine="llamacpp", weights="Q6_K", prompt=512,
               generate=0)
    assert abs(q6.extras["gpu_weights_mib"] - 17248.9) < 1  # output.weight Q6_K, not Q8_0


def test_llamacpp_offload_splits_weights_and_kv() -> None:
    spec = get_entry("llama-3.1-8b").spec
    full = infer(spec, engine="llamacpp", weights="Q4_K_M", prompt=4096, generate=0)
    half = infer(spec, engine="llamacpp", weights="Q4_K_M", prompt=4096, generate=0,
                 n_gpu_layers=16)
    none = infer(spec, engine="llamacpp", weights="Q4_K_M", prompt=4096, generate=0,
                 n_gpu_layers=0)
    total = model_weights(spec, resolve_weights_option(spec, "Q4_K_M", "llamacpp")).total \
        - model_weights(spec, resolve_weights_option(spec, "Q4_K_M", "llamacpp")).components[
            "buffers"]
    for e in (full, half, none):
        assert e.components["weights"] + e.extras["host_weights_bytes"] == total
        assert e.components["kv_cache"] + e.extras["host_kv_bytes"] == \
            full.components["kv_cache"]
    assert half.components["kv_cache"] * 2 == full.components["kv_cache"]
    # -ngl 0: no weights on the GPU, but the compute buffer stays there (op offload)
    assert none.components["weights"] == 0 and none.components["activations"] > 0
    assert half.host_bytes > 0


def test_llamacpp_rejects_non_gguf_formats() -> None:
    with pytest.raises(MemfitError) as err:
        infer("llama-3.1-8b", engine="llamacpp", weights="bnb-nf4")
    assert err.value.field == "weights"


def test_hf_reads_gguf_as_dequantized() -> None:
    e = infer("llama-3.1-8b", weights="Q4_K_M")
    assert e.assumptions["weights"] == "bf16"
    assert any("dequantizes" in n for n in e.assumptions["notes"])


# ------------------------------------------------------------------------------------------
# FastChat (transformers) on an RTX 3090
# ------------------------------------------------------------------------------------------

def test_fastchat_llama2_7b_rtx3090() -> None:
    e = infer("llama-2-7b", weights="fp16", gpu="rtx-3090", prompt=1, generate=0)
    weights_mib = e.components["weights"] / MiB
    assert abs(weights_mib - 12852.5) < 1
    loaded = (e.components["weights"] + e.overheads["cuda_context"]) / MiB
    assert abs(loaded - 13213) / 13213 <= 0.05
    assert 1.0 <= e.total_bytes / MiB / 13213 <= 1.15  # the allocator-slack term, see above
    assert e.fits is True


def test_llamacpp_fit_finds_the_most_gpu_layers() -> None:
    r = fit_infer("llama-3.1-70b", "rtx-4090", engine="llamacpp", weights="Q4_K_M",
                  prompt=8192, generate=0)
    n = r.max_gpu_layers
    assert n is not None and 0 < n < 80
    base = dict(engine="llamacpp", weights="Q4_K_M", prompt=8192, generate=0, gpu="rtx-4090")
    assert infer("llama-3.1-70b", n_gpu_layers=n, **base).fits
    assert not infer("llama-3.1-70b", n_gpu_layers=n + 1, **base).fits


# ------------------------------------------------------------------------------------------
# llama.cpp options
# ------------------------------------------------------------------------------------------

def test_llamacpp_llama3_8b_published_buffers_without_flash_attention() -> None:
    # Ollama's llama runner log (llama.cpp, n_ctx 8192 = 4 slots x 2048, n_ubatch 512,
    # flash_attn = 0): "CPU model buffer size = 281.81 MiB", "CUDA0 model buffer size =
    # 4403.49 MiB" (Q4_K_M), "CUDA0 KV buffer size = 1024.00 MiB", "CUDA0 compute buffer size
    # = 560.00 MiB"; a Llama 3 8B Q4_0 log shows "CUDA0 buffer size = 4156.00 MiB".
    e = infer("llama-3.1-8b", engine="llamacpp", weights="Q4_K_M", batch=4, prompt=2000,
              generate=48, flash_attn="off")
    x = e.extras
    assert x["n_ctx"] == 8192 and x["n_ubatch"] == 512 and x["flash_attn"] is False
    assert abs(x["gpu_weights_mib"] - 4403.49) <= 0.01
    assert round(x["host_weights_bytes"] / MiB, 2) == 281.81
    assert x["kv_cache_mib"] == 1024.0
    assert abs(x["compute_buffer_mib"] - 560.0) <= 0.05 * 560
    q4_0 = infer("llama-3-8b", engine="llamacpp", weights="Q4_0", prompt=512, generate=0)
    assert abs(q4_0.extras["gpu_weights_mib"] - 4156.00) <= 0.05


def test_llamacpp_flash_attention_and_ubatch() -> None:
    base = dict(engine="llamacpp", weights="Q4_K_M", prompt=32768, generate=0)
    on = infer("llama-3.1-8b", flash_attn="on", **base)
    auto = infer("llama-3.1-8b", **base)
    off = infer("llama-3.1-8b", flash_attn="off", **base)
    assert auto.components["activations"] == on.components["activations"]
    # the f32 KQ scores: 4 * 32768 * 512 * 32 heads = 2 GiB
    assert off.components["activations"] > 2 * 2**30 > 6 * on.components["activations"]
    half = infer("llama-3.1-8b", ubatch_size=256, flash_attn="off", **base)
    assert half.extras["n_ubatch"] == 256
    assert 1.9 < off.components["activations"] / half.components["activations"] < 2.1


def test_llamacpp_separate_k_and_v_cache_types() -> None:
    base = dict(engine="llamacpp", weights="Q4_K_M", prompt=8192, generate=0)
    f16 = infer("llama-3.1-8b", **base).components["kv_cache"]
    kq8 = infer("llama-3.1-8b", cache_type_k="q8_0", **base)
    both = infer("llama-3.1-8b", cache_type_k="q8_0", cache_type_v="q8_0", **base)
    # q8_0: 34 bytes per 32 elements; f16: 64
    assert kq8.components["kv_cache"] == f16 // 2 + f16 // 2 * 34 // 64
    assert both.components["kv_cache"] == f16 * 34 // 64
    assert kq8.assumptions["kv_dtype"] == "K q8_0, V f16"
    # a quantized V cache needs flash attention: llama.cpp refuses the context
    refused = infer("llama-3.1-8b", cache_type_v="q8_0", flash_attn="off", gpu="h100", **base)
    assert refused.fits is False and "flash attention" in refused.extras["blockers"][0]
    with pytest.raises(MemfitError) as err:
        infer("llama-3.1-8b", cache_type_k="q7", **base)
    assert err.value.field == "cache-type-k"


def test_llamacpp_n_cpu_moe_keeps_experts_in_host_ram() -> None:
    base = dict(engine="llamacpp", weights="Q4_K_M", prompt=4096, generate=0)
    full = infer("qwen3-30b-a3b", **base)
    moe = infer("qwen3-30b-a3b", n_cpu_moe=12, **base)
    moved = moe.extras["experts_on_cpu_bytes"]
    assert moved > 0
    assert full.components["weights"] - moe.components["weights"] == moved
    assert moe.extras["host_weights_bytes"] - full.extras["host_weights_bytes"] == moved
    spec = get_entry("qwen3-30b-a3b").spec
    rw = resolve_weights_option(spec, "Q4_K_M", "llamacpp")
    assert moved == model_weights(spec, rw, start=0, stop=12, first=False,
                                  last=False).components["experts"]
    dense = infer("llama-3.1-8b", n_cpu_moe=4, **base)
    assert any("n-cpu-moe ignored" in n for n in dense.assumptions["notes"])


def test_llamacpp_reports_in_llama_cpp_words() -> None:
    e = infer("llama-3.1-8b", engine="llamacpp", weights="Q4_K_M", gpu="rtx-4090")
    assert "allocator_slack" not in e.overheads  # ggml allocates its buffers once
    assert {t.name for t in e.terms} >= {"model_buffer", "kv_buffer", "compute_buffer"}
    text = render_estimate(e)
    assert "model buffer" in text and "KV buffer" in text and "compute buffer" in text
    assert "torch.cuda" not in text and "allocator slack" not in text


def test_vllm_a5000_llama31_8b_published_pool() -> None:
    # a public measurement: RTX A5000, Llama-3.1-8B bf16, enforce_eager, max_model_len 2048,
    # LLM class: "Available KV cache memory: 5.29 GiB", "GPU KV cache size: 43,296 tokens"
    e = infer("llama-3.1-8b", engine="vllm", gpu="rtx-a5000", enforce_eager=True,
              max_model_len=2048, vllm_entrypoint="llm")
    assert abs(e.extras["kv_cache_tokens"] - 43296) / 43296 <= 0.02
    assert abs(e.extras["available_kv_bytes"] / 2**30 - 5.29) / 5.29 <= 0.02


def test_vllm_start_refusal_matches_the_published_message() -> None:
    # "To serve at least one request with the model's max seq len (131072), 20.0 GiB KV cache
    # is needed": Llama-3.3-70B FP8 with an fp8 KV cache on one 80 GB GPU
    e = infer("llama-3.3-70b", engine="vllm", gpu="h100", weights="fp8", kv_dtype="fp8",
              max_num_batched_tokens=8192, max_num_seqs=8)
    assert e.extras["starts"] is False
    assert "needs 20.00 GiB of KV cache" in e.extras["blockers"][0]
    # "Model loading took 67.7 GiB"
    assert abs(e.components["weights"] / 2**30 - 67.7) <= 0.05


def test_llamacpp_tensor_split_over_gpus() -> None:
    base = dict(engine="llamacpp", weights="Q4_K_M", prompt=8192, generate=0)
    one = infer("llama-3.1-70b", **base)
    two = infer("llama-3.1-70b", tensor_split="1,1", **base)
    per = two.extras["per_gpu"]
    # src/llama-model.cpp: layer il on upper_bound(splits, il / 81): 41 + 39 layers, the
    # output layer (index 80) on the last GPU
    assert [g["layers"] for g in per] == [[0, 41], [41, 80]]
    assert [g["output_layer"] for g in per] == [False, True]
    assert sum(g["model_buffer_bytes"] for g in per) == one.components["weights"]
    assert sum(g["kv_buffer_bytes"] for g in per) == one.components["kv_cache"]
    top = max(per, key=lambda g: g["model_buffer_bytes"] + g["kv_buffer_bytes"]
              + g["compute_buffer_bytes"])
    assert two.components["weights"] == top["model_buffer_bytes"]
    assert two.extras["most_loaded_gpu"] == top["gpu"]
    assert "CUDA1 KV buffer" in two.extras["buffers"]
    # a 3:1 split puts three quarters of the layers on the first GPU
    skew = infer("llama-3.1-70b", tensor_split="3,1", **base).extras["per_gpu"]
    assert skew[0]["layers"] == [0, 61]
    for bad in ("0,0", "a,b", "-1,2", ""):
        with pytest.raises(MemfitError) as err:
            infer("llama-3.1-8b", tensor_split=bad, **base)
        assert err.value.field == "tensor-split"


def test_one_verdict_in_python_json_and_the_web_api() -> None:
    # the cases agree everywhere: infer, fit, the JSON contract and the web API
    import importlib.util

    pytest.importorskip("fastapi")
    if not any(importlib.util.find_spec(m) for m in ("httpx2", "httpx")):
        pytest.skip("FastAPI's TestClient needs httpx2 (or httpx)")
    from fastapi.testclient import TestClient

    from memfit.web import create_app

    client = TestClient(create_app())
    cases = [("llama-3.1-8b", {"engine": "vllm"}, "l4"),
             ("llama-3.1-70b", {"engine": "vllm", "tp": 2, "prompt": 32768}, "a100"),
             ("llama-3.1-8b", {"prompt": 200_000}, "b200"),
             ("gpt-oss-120b", {}, "h100"), ("llama-3.1-8b", {}, "24GiB")]
    for model, opts, gpu in cases:
        e = infer(model, gpu=gpu, **opts)
        web = client.post("/api/infer", json={"model": model,
                                               "options": {**opts, "gpu": gpu}}).json()
        assert web["fits"] == e.to_dict()["fits"] == e.fits, (model, opts, gpu)
        rows = client.post("/api/verdicts", json={"mode": "infer", "model": model,
                                                  "gpus": [gpu], "options": opts}).json()
        assert rows["verdicts"][0]["fits"] == e.fits, (model, opts, gpu)


# ------------------------------------------------------------------------------------------
# vLLM's profile run: the sampler warm-up and the published profile peaks (issue 15)
# ------------------------------------------------------------------------------------------

def test_vllm_sampler_warmup_sees_the_whole_vocabulary_on_every_tp_rank() -> None:
    # gpu_model_runner.py _dummy_sampler_run over min(max_num_seqs, tokens) rows: the logits
    # all-gathered to the whole (64-padded) vocabulary on every rank
    # (logits_processor.py _gather_logits, Platform.use_all_gather under V1), three fp32
    # [rows, V] copies in the sampler, and profile_run's hidden states still alive
    V, h, rows, M = 128256, 4096, 256, 2048  # llama-3.1-8b on an L4: `vllm serve` defaults
    sampler = rows * (V * 2 + V * 4 * 3) + (M + rows) * h * 2
    for tp in (1, 2):
        e = infer("llama-3.1-8b", engine="vllm", gpu="l4", tp=tp)
        assert e.extras["profile_activation_bytes"] == sampler
        assert e.extras["profile_peak"].startswith("sampler")
    # GPT-2's 50257 tokens are padded to 50304 in the gathered bf16 logits only
    g = infer("gpt2", engine="vllm", gpu="l4", max_num_seqs=256, max_num_batched_tokens=512)
    assert g.extras["profile_activation_bytes"] == (256 * (50304 * 2 + 50257 * 12)
                                                    + (512 + 256) * 768 * 2)


def test_vllm_qwen25_05b_a100_40gb_published_profile() -> None:
    # kvcached PR 448 (vLLM V1, 2026-08): A100-40GB, enforce_eager, u=0.92: requested
    # 36.33 GiB, weights_memory 0.93 GiB, torch_peak_increase 0.59 GiB, non_torch 0.11 GiB,
    # real KV capacity 34.70 GiB
    e = infer("qwen2.5-0.5b", engine="vllm", gpu="a100-40gb", gpu_memory_utilization=0.92,
              enforce_eager=True)
    x = e.extras
    assert abs(x["requested_bytes"] / 2**30 - 36.33) / 36.33 <= 0.005
    assert abs(e.components["weights"] / 2**30 - 0.93) / 0.93 <= 0.02
    # the sampler warm-up dominates (256 rows x 151,936 tokens); memfit's three fp32 copies
    # give 0.51 GiB, -13% of the measured peak (docs/inference.md)
    peak = x["profile_activation_bytes"] / 2**30
    assert x["profile_peak"].startswith("sampler") and -0.15 <= (peak - 0.59) / 0.59 <= -0.10
    assert abs(x["available_kv_bytes"] / 2**30 - 34.70) / 34.70 <= 0.01


def test_vllm_llama2_70b_tp4_what_is_ruled_out() -> None:
    # the +50% miss (docs/inference.md): none of vLLM's own profile terms comes near the
    # ~13.8 GiB per GPU the published pool leaves unexplained
    base = dict(engine="vllm", gpu="a100-80gb", tp=4, vllm_version="0.12")
    # the 2023 profile: max_num_batched_tokens = max(max_model_len, 2560) = 4096 tokens in
    # 256 dummy sequences (worker.py profile_num_available_blocks)
    old = infer("llama-2-70b", gpu_memory_utilization=0.9, max_num_batched_tokens=4096,
                max_num_seqs=256, **base)
    assert old.extras["profile_activation_bytes"] < 0.5 * 2**30
    assert old.extras["kv_cache_blocks"] / 20865 > 1.45
    # what does reproduce it: u = 0.74 of the card
    low = infer("llama-2-70b", gpu_memory_utilization=0.74, **base)
    assert abs(low.extras["kv_cache_blocks"] - 20865) / 20865 <= 0.01
    # a 40 GB card cannot: 32.1 GiB of weights per GPU leave a few thousand blocks at most
    small = infer("llama-2-70b", **{**base, "gpu": "a100-40gb"}, gpu_memory_utilization=0.9)
    assert small.extras["kv_cache_blocks"] < 3000


def test_vllm_qwen3_235b_fp8_tp4_published_gap_is_documented() -> None:
    # vllm issue 21348 (V1, 2025-07, LMCache connector, u=0.9): "Available KV cache memory:
    # 8.11 GiB", "GPU KV cache size: 178,880 tokens"; memfit +60% (docs/inference.md: NCCL
    # beyond ring buffers, the sort-based sampler warm-up of that release, LMCache)
    e = infer("qwen3-235b-a22b", engine="vllm", gpu="h100", tp=4, weights="fp8-block",
              vllm_version="0.10")
    x = e.extras
    assert x["kv_bytes_per_token"] == 94 * 2 * 1 * 128 * 2  # one KV head per GPU
    # the published pool's own two lines agree to 1.1% (one worker's memory, the minimum's
    # tokens)
    assert abs(8.11 * 2**30 / x["kv_bytes_per_token"] - 178880) / 178880 <= 0.012
    # the sampler warm-up dominates the profile: 1024 rows x 151,936 tokens on every rank
    assert x["profile_peak"].startswith("sampler") and x["max_num_seqs"] == 1024
    assert 1.55 <= x["available_kv_bytes"] / (8.11 * 2**30) <= 1.65
