"""SGLang and Ollama engines: each rule pinned (sources in src/memfit/engine_sglang.py and
engine_ollama.py, published log lines in docs/inference.md)."""

from __future__ import annotations

import pytest

from memfit.arch import from_hf_config
from memfit.catalog import get_entry
from memfit.engine_ollama import OLLAMA_NUM_CTX, ollama_graph_size
from memfit.engine_sglang import cuda_graph_batch_sizes, sglang_context_length, sglang_defaults
from memfit.errors import MemfitError
from memfit.inference import fit_infer, infer
from memfit.report import render_estimate

GiB = 2**30


def test_sglang_default_fraction_h100_matches_published_server_args() -> None:
    # SGLang's docs notebook (H100, tp 1) prints ServerArgs(... mem_fraction_static=0.835,
    # chunked_prefill_size=8192 ...); nvidia-smi total 81559 MiB
    assert sglang_defaults(81559, 1) == (8192, 256, 0.835)
    # the rule: reserved = 512 + 1.5 * max(chunk, 2048) + 2 * max_bs + tp*pp/8*1024 MiB,
    # at least 10 GiB above 60 GiB
    chunk, bs, frac = sglang_defaults(81559, 8)
    assert (chunk, bs) == (8192, 512) and frac == round((81559 - 14848) / 81559, 3)
    assert sglang_defaults(24564, 1)[:2] == (2048, 24)  # < 35 GiB: A10, 4090
    assert sglang_defaults(24564, 4)[:2] == (2048, 80)
    assert sglang_defaults(15360, 1)[:2] == (2048, 8)  # T4
    assert sglang_defaults(46068, 1)[:2] == (4096, 32)  # L40
    assert sglang_defaults(183359, 8)[:2] == (16384, 512)  # B200
    assert sglang_defaults(None, 1) == (4096, 160, 0.88)


def test_sglang_cuda_graph_sizes() -> None:
    assert cuda_graph_batch_sizes(8) == [1, 2, 4, 8]
    sizes = cuda_graph_batch_sizes(256)
    assert sizes[:6] == [1, 2, 4, 8, 12, 16] and sizes[-1] == 256 and len(sizes) == 36
    assert cuda_graph_batch_sizes(512)[-1] == 512


def test_sglang_context_length_rule() -> None:
    base = {k: v for k, v in get_entry("llama-3.1-8b").config.items()
            if k not in ("max_position_embeddings", "rope_scaling", "rope_parameters")}

    def context(**cfg: object) -> int:  # the model's config with these keys
        return sglang_context_length(from_hf_config({**base, **cfg}))

    # llama3 rope scaling is not multiplied (get_context_length)
    assert context(max_position_embeddings=131072,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0}) == 131072
    assert context(max_position_embeddings=4096,
                   rope_scaling={"type": "linear", "factor": 2}) == 8192
    assert context(max_position_embeddings=4096, rope_scaling={
        "type": "yarn", "factor": 4, "original_max_position_embeddings": 4096}) == 4096
    assert context(seq_length=2048, max_position_embeddings=8192) == 2048


def test_sglang_pool_is_profile_max_num_token() -> None:
    e = infer("llama-3.1-8b", engine="sglang", gpu="h100")
    x = e.extras
    assert x["starts"] is True and e.fits is True
    cell = 8 * 128 * 32 * 2 * 2  # kv heads * head_dim * layers * (K, V) * bf16
    assert x["kv_bytes_per_token"] == cell
    assert e.components["kv_cache"] == x["kv_cache_tokens"] * cell
    # rest = free_before - W - free_before * (1 - f), tokens = rest // cell
    w = e.components["weights"]
    free_before = 81559 * 2**20 - 480 * 2**20 - e.overheads["cuda_context"]
    rest = free_before - w - free_before * (1 - x["mem_fraction_static"])
    assert x["kv_cache_tokens"] == int(rest // cell)
    assert x["log_line"].startswith(f"KV Cache is allocated. #tokens: {x['kv_cache_tokens']}, "
                                    "K size: ")
    # max_num_reqs = min(max(tokens / context_len * 512, 2048), 4096); running = min(., tok/2)
    assert x["max_running_requests"] == min(max(int(x["kv_cache_tokens"] / 131072 * 512), 2048),
                                            4096)
    assert x["req_to_token_pool_bytes"] == (x["max_running_requests"] + 1) * (131072 + 4) * 4


def test_sglang_published_kv_sizes() -> None:
    # Qwen3-235B-A22B-FP8, TP 4 (vllm issue 21348): "#tokens: 367404, K size: 8.23 GB"
    e = infer("qwen3-235b-a22b", engine="sglang", tp=4, gpu="h100", mem_fraction_static=0.93,
              weights="fp8-block")
    assert round(367404 * e.extras["kv_bytes_per_token"] / 2 / GiB, 2) == 8.23
    # DeepSeek (MLA, fp8 KV): "#tokens: 524288, KV size: 17.16 GB"
    d = infer("deepseek-v3", engine="sglang", tp=8, gpu="h200", kv_dtype="fp8")
    assert d.extras["kv_bytes_per_token"] == (512 + 64) * 61
    assert round(524288 * d.extras["kv_bytes_per_token"] / GiB, 2) == 17.16


def test_sglang_refusals_and_warnings() -> None:
    # a fraction below the weights: "Not enough memory. Please try to increase
    # --mem-fraction-static."
    e = infer("llama-3.1-8b", engine="sglang", gpu="l4", mem_fraction_static=0.5)
    assert e.extras["starts"] is False and e.fits is False
    assert "increase --mem-fraction-static" in e.extras["blockers"][0]
    assert "DOES NOT START" in render_estimate(e)
    # longer context than derived: refused
    with_ctx = infer("llama-3.1-8b", engine="sglang", gpu="h100", context_length=200_000)
    assert with_ctx.fits is False and "SGLANG_ALLOW_OVERWRITE" in with_ctx.extras["blockers"][0]
    # a request above the context: SGLang starts (fits == starts), rejects the request
    long = infer("llama-3.1-8b", engine="sglang", gpu="h100", prompt=200_000)
    assert long.fits is True and long.extras["serves_request"] is False
    assert "rejects the request" in " ".join(render_estimate(long).split())
    # a fraction leaving too little for graphs and the prefill chunk: out of memory
    tight = infer("llama-3.1-8b", engine="sglang", gpu="h100", mem_fraction_static=0.99)
    assert tight.extras["starts"] is False and "CUDA-graph" in tight.extras["blockers"][0]


def test_sglang_fits_equals_starts_and_fit_agrees() -> None:
    for gpu in ("h100", "a100-80gb", "rtx-4090", "l4", "24GiB"):
        e = infer("llama-3.1-8b", engine="sglang", gpu=gpu)
        assert e.fits == e.extras["starts"]
        assert e.to_dict()["fits"] == e.fits
        r = fit_infer("llama-3.1-8b", gpu, engine="sglang", gpus=1)
        assert r.fits == e.fits
    r = fit_infer("llama-3.1-8b", "h100", engine="sglang")
    assert r.max_prompt <= 131072  # the context length caps the prompt


def test_sglang_options_only_with_sglang() -> None:
    with pytest.raises(MemfitError, match="only with --engine sglang"):
        infer("llama-3.1-8b", engine="vllm", mem_fraction_static=0.8)
    with pytest.raises(MemfitError, match="only with --engine ollama"):
        infer("llama-3.1-8b", engine="sglang", num_ctx=8192)
    # llama.cpp settings are Ollama's too
    infer("llama-3.1-8b", engine="ollama", flash_attn="on", n_gpu_layers=10)
    with pytest.raises(MemfitError, match="--engine llamacpp or --engine ollama"):
        infer("llama-3.1-8b", engine="vllm", n_gpu_layers=10)


def test_ollama_defaults_and_context() -> None:
    assert OLLAMA_NUM_CTX == {"0.5": 2048, "0.9": 4096}
    # the newest releases: by VRAM (4k below 24 GiB, 32k below 48 GiB, else 256k)
    for gpu, ctx in (("rtx-3060", 4096), ("rtx-4090", 4096),  # 23.99 GiB: below 24
                     ("rtx-5090", 32768), ("l40s", 32768), ("h100", 262144)):
        assert infer("llama-3.1-8b", engine="ollama", gpu=gpu,
                     ollama_version="0.34").extras["num_ctx"] == ctx
    e = infer("llama-3.1-8b", engine="ollama", gpu="rtx-3060")
    x = e.extras
    # Q4_K_M (the library's default tag), 4096 cells, f16 cache: 32 * 4096 * 1024 * 2 * 2
    assert x["n_ctx"] == 4096 and x["buffers"]["CUDA0 KV buffer"] == 512 * 2**20
    assert x["buffers"]["CUDA0 model buffer"] == pytest.approx(4403.49 * 2**20, abs=2**14)
    assert x["flash_attn"] is False  # OLLAMA_FLASH_ATTENTION unset
    par = infer("llama-3.1-8b", engine="ollama", gpu="rtx-3060", num_parallel=4,
                ollama_version="0.5")
    assert par.extras["n_ctx"] == 4 * 2048  # num_ctx x OLLAMA_NUM_PARALLEL
    # the published Ollama runner log (docs/inference.md): n_ctx 8192, no FA, 560 MiB compute
    assert par.extras["buffers"]["CUDA0 compute buffer"] == 560 * 2**20
    # a quantized cache without flash attention falls back to f16
    q = infer("llama-3.1-8b", engine="ollama", gpu="rtx-3060", cache_type_k="q8_0")
    assert q.extras["buffers"]["CUDA0 KV buffer"] == 512 * 2**20
    assert any("falls back to f16" in n for n in q.assumptions["notes"])
    qa = infer("llama-3.1-8b", engine="ollama", gpu="rtx-3060", cache_type_k="q8_0",
               flash_attn="on")
    assert qa.extras["buffers"]["CUDA0 KV buffer"] == 512 * 2**20 * 34 // 64


def test_ollama_graph_size_llama() -> None:
    spec = get_entry("llama-3.1-8b").spec
    partial, full = ollama_graph_size(spec, 2048, 512)
    # fullOffload = max(4b(1 + 4h + c(1 + heads)), 4b(h + V))
    assert full == max(4 * 512 * (1 + 4 * 4096 + 2048 * 33), 4 * 512 * (4096 + 128256))
    assert partial > full


def test_ollama_layer_choice() -> None:
    big = infer("llama-3.1-8b", engine="ollama", gpu="h100")
    assert big.extras["ollama_offload_layers"] == 33 and big.fits
    small = infer("llama-3.1-8b", engine="ollama", gpu="6GiB")
    n = small.extras["ollama_offload_layers"]
    assert 0 < n < 33 and small.fits is True
    assert small.extras["n_gpu_layers"] == n
    assert small.extras["memory_required_full_bytes"] > small.extras[
        "memory_required_partial_bytes"]
    assert "layers.offload=" in small.extras["log_line"]
    # a user's num_gpu beyond what fits: llama.cpp runs out of memory
    forced = infer("llama-3.1-8b", engine="ollama", gpu="4GiB", n_gpu_layers=33)
    assert forced.fits is False
    # batch beyond OLLAMA_NUM_PARALLEL is queued, not refused
    q = infer("llama-3.1-8b", engine="ollama", gpu="h100", batch=4)
    assert q.fits is True and q.extras["serves_request"] is False
    assert "queues the rest" in render_estimate(q)


def _verdict_word(text: str) -> bool:
    """Whether the text's verdict says the engine runs it: FITS, or STARTS with the request
    served otherwise than asked (rejected, truncated or queued: said under the verdict)."""
    line = next(x for x in text.splitlines() if x.startswith("Fit: "))
    return line.startswith(("Fit: FITS", "Fit: STARTS"))


@pytest.mark.parametrize("engine, extra", [
    ("hf", {}), ("vllm", {}), ("sglang", {}), ("llamacpp", {}), ("ollama", {}),
    ("vllm", {"max_model_len": 8192, "batch": 64}), ("sglang", {"prompt": 200_000}),
    ("ollama", {"batch": 4})])
def test_one_verdict_everywhere(capsys, engine, extra) -> None:
    """CLI text, CLI JSON, the Python estimate, fit and the web API give one verdict."""
    import importlib.util
    import json

    from memfit.cli import main

    has_client = any(importlib.util.find_spec(m) for m in ("httpx2", "httpx"))
    client = None
    if has_client and importlib.util.find_spec("fastapi"):
        from fastapi.testclient import TestClient

        from memfit.web import create_app

        client = TestClient(create_app())
    for gpu in ("l4", "rtx-4090", "h100"):
        e = infer("llama-3.1-8b", engine=engine, gpu=gpu, **extra)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
        assert main(["infer", "llama-3.1-8b", f"--engine={engine}", f"--gpu={gpu}",
                     *flags]) == 0
        text = capsys.readouterr().out
        assert _verdict_word(text) == e.fits, (engine, gpu, text)
        assert main(["infer", "llama-3.1-8b", f"--engine={engine}", f"--gpu={gpu}", *flags,
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["fits"] == e.fits
        assert fit_infer("llama-3.1-8b", gpu, engine=engine, gpus=1, **extra).fits == e.fits
        if engine in ("vllm", "sglang"):
            assert e.fits == e.extras["starts"]
        for w in e.extras.get("warnings") or ():
            assert w.split(":")[0][:30] in text.replace("\n       ", " ")
        if client is not None:
            web = client.post("/api/infer", json={"model": "llama-3.1-8b", "options": {
                "engine": engine, "gpu": gpu, **extra}}).json()
            assert web["fits"] == e.fits and web["extras"].get("warnings") == e.extras.get(
                "warnings")


def test_ollama_published_offload_line_70b() -> None:
    """ollama issue 5913 (0.2.x): llama3:70b, 24 GiB ROCm, ctx 2048, no flash attention:
    layers.offload=43 memory.required.kv="640.0 MiB" memory.weights.total="39.9 GiB"
    memory.graph.full="313.0 MiB" memory.graph.partial="1.3 GiB" (docs/inference.md: memfit
    45 layers, kv 0%, weights -0.7%, graph full +3.5%, partial -17%)."""
    from memfit.engine_ollama import ollama_layers
    from memfit.memory.weights import resolve_weights_option

    spec = get_entry("llama-3-70b").spec
    rw = resolve_weights_option(spec, "Q4_K_M", "llamacpp")
    r = ollama_layers(spec, rw, 24 * GiB, 2048, 512, 2.0, None)
    assert r["kv"] == 640 * 2**20
    assert r["model_layers"] == 81 and r["offload"] == 45
    assert abs(r["weights"] / (39.9 * GiB) - 1) < 0.01
    assert abs(r["graph_full"] / (313 * 2**20) - 1) < 0.04
    assert abs(r["required_partial"] / (23.7 * GiB) - 1) < 0.01


def test_sglang_published_run_on_a_288_gib_card() -> None:
    """sglang PR 18263 (2026-07): Qwen3-30B-A3B bf16, TP 1, defaults on a 288 GB AMD card:
    mem_fraction_static 0.911, "mem usage=56.98 GB" after the weights, profile rest
    "initial available_bytes ... 204.63 GB" (docs/inference.md: 0 / -0.2% / -0.09%)."""
    import memfit

    card = memfit.make_gpu("amd-288gib", 288 * GiB)
    e = infer("qwen3-30b-a3b", engine="sglang", gpu=card)
    x = e.extras
    assert x["mem_fraction_static"] == 0.911
    assert abs(e.components["weights"] / (56.98 * GiB) - 1) < 0.005
    rest = x["kv_cache_tokens"] * x["kv_bytes_per_token"]
    assert abs(rest / (204.63 * GiB) - 1) < 0.002
