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

import pytest

from memfit.catalog import get_entry
from memfit.errors import MemfitError
from memfit.inference import fit_infer, infer
from memfit.memory.weights import model_weights, resolve_weights_option

MiB = 2**20


# ------------------------------------------------------------------------------------------
# vLLM
# ------------------------------------------------------------------------------------------

def test_vllm_llama2_7b_a100_blocks() -> None:
    e = infer("llama-2-7b", engine="vllm", gpu="a100-80gb", gpu_memory_utilization=0.9,
              prompt=1024, generate=1024)
    blocks = e.extras["kv_cache_blocks"]
    assert abs(blocks - 7351) / 7351 <= 0.03, blocks
    assert e.extras["kv_cache_tokens"] == 16 * blocks
    assert e.extras["kv_block_bytes"] == 16 * 32 * 2 * 4096 * 2  # 8 MiB per block
    # sequences of 2048 tokens held at once: floor(blocks / 128)
    assert e.extras["max_concurrency"] == blocks // 128
    assert e.extras["fits_concurrently"] is True


def test_vllm_llama2_70b_tp4_blocks_gap_is_documented() -> None:
    e = infer("llama-2-70b", engine="vllm", gpu="a100-80gb", gpu_memory_utilization=0.9, tp=4)
    blocks = e.extras["kv_cache_blocks"]
    # one block per GPU: 16 tokens x 80 layers x 2 x (8/4 KV heads) x 128 x 2 B = 1.25 MiB
    assert e.extras["kv_block_bytes"] == 16 * 80 * 2 * 2 * 128 * 2
    # memfit's own figure (weights 32.1 GiB per GPU, ~0.6 GiB profiled activations)
    assert 31000 <= blocks <= 32500
    assert 1.4 <= blocks / 20865 <= 1.6  # the unexplained gap, see the module docstring


def test_vllm_pool_fills_the_reservation() -> None:
    e = infer("llama-3.1-8b", engine="vllm", gpu="h100", gpu_memory_utilization=0.9)
    d = e.to_dict()
    reserved = e.extras["requested_bytes"]
    # weights + activations + KV pool + non-torch fill util * (total - driver reserve)
    used = e.peak_bytes + e.overheads["non_torch"]
    assert 0 <= reserved - used < e.extras["kv_block_bytes"]
    assert d["components"]["kv_cache"] == e.extras["kv_cache_blocks"] * e.extras["kv_block_bytes"]


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
    assert none.components["weights"] == 0 and none.components["activations"] == 0
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
