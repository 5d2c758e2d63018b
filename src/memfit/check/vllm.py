"""``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server`` and SGLang's
``python -m sglang.launch_server`` command lines, read into ``memfit infer --engine vllm``.

Names and defaults are vLLM's own: ``vllm/engine/arg_utils.py`` (``EngineArgs`` and its
``add_cli_args``: ``--tensor-parallel-size``/``-tp``, ``--pipeline-parallel-size``/``-pp``,
``--data-parallel-size``/``-dp``, ``--quantization``/``-q``), ``vllm/config/cache.py``
(``CacheConfig``: ``gpu_memory_utilization = 0.9``, ``block_size`` 16 on CUDA, ``cache_dtype =
"auto"``, ``swap_space``, ``cpu_offload_gb``), ``vllm/config/model.py`` (``max_model_len``:
None = derived from the model config's ``max_position_embeddings``) and
``vllm/config/scheduler.py`` (``max_num_seqs``, ``max_num_batched_tokens``), vLLM v0.10.
vLLM refuses to start unless one sequence of ``max_model_len`` tokens fits the KV cache
(``vllm/v1/core/kv_cache_utils.py``, ``check_enough_kv_cache_memory``): memfit's
``--max-model-len`` answers that question, from the model's own limit when none is given.

SGLang's names are from ``python/sglang/srt/server_args.py`` (``ServerArgs``): they map to
memfit's ``--engine sglang`` options of the same names (``--mem-fraction-static``,
``--context-length``, ``--max-running-requests``, ``--chunked-prefill-size``,
``--cuda-graph-max-bs``, ``--disable-cuda-graph``; :mod:`memfit.engine_sglang`).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, long_options, to_float, to_int

__all__ = ["read_vllm", "read_sglang", "QUANTIZATION"]

# vLLM --quantization (and SGLang's) -> memfit weight format. Group size 128 is the
# published default of AutoAWQ and AutoGPTQ checkpoints; vLLM's in-flight "fp8" is per-tensor
# e4m3 (vllm/model_executor/layers/quantization/fp8.py); its "bitsandbytes" loads NF4.
QUANTIZATION = {
    "fp8": "fp8-e4m3", "awq": "awq-int4-g128", "awq_marlin": "awq-int4-g128",
    "gptq": "gptq-int4-g128", "gptq_marlin": "gptq-int4-g128", "bitsandbytes": "bnb-nf4",
    "mxfp4": "mxfp4", "modelopt_fp4": "nvfp4", "fbgemm_fp8": "fp8-e4m3",
}
_DTYPES = {"auto": None, "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
           "float32": "fp32", "float": "fp32"}
_KV = {"auto": None, "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2",
       "bfloat16": "bf16", "float16": "fp16"}

_NO_MEMORY = ("host", "port", "served-model-name", "api-key", "trust-remote-code",
              "download-dir", "tokenizer", "chat-template", "uvicorn-log-level",
              "disable-log-requests", "disable-log-stats", "seed", "load-format", "revision",
              "generation-config", "enable-auto-tool-choice", "tool-call-parser",
              "reasoning-parser", "tokenizer-mode", "config-format", "enable-prefix-caching",
              "enable-chunked-prefill", "disable-custom-all-reduce", "distributed-executor-backend",
              "ssl-keyfile", "ssl-certfile", "root-path", "allowed-origins", "log-level",
              "tokenizer-path", "enable-metrics", "trust-remote-code")
_VLLM_IGNORED = {
    "cpu-offload-gb": "weights kept in CPU memory: less GPU memory for weights than counted",
    "swap-space": "CPU memory for preempted sequences: no GPU effect",
    "enable-lora": "LoRA adapter slots reserve extra GPU memory, not counted",
    "max-lora-rank": "LoRA adapter slots reserve extra GPU memory, not counted",
    "max-loras": "LoRA adapter slots reserve extra GPU memory, not counted",
    "speculative-config": "a draft model adds its weights and KV cache, not counted",
    "num-speculative-tokens": "a draft model adds its weights and KV cache, not counted",
    "limit-mm-per-prompt": "the multimodal encoder's cache and profiling, not counted",
    "enable-expert-parallel": "experts sharded over the TP x DP ranks instead of split by "
                              "TP: per-GPU expert bytes about the same, not modelled apart",
    "max-seq-len-to-capture": "CUDA graph capture sizes; memfit uses a fixed allowance",
    "compilation-config": "torch.compile and CUDA graph settings; memfit uses a fixed "
                          "allowance",
    "kv-offloading-size": "KV cache blocks kept in CPU memory: no GPU effect beyond the pool",
}
_VLLM_SWITCHES = frozenset({"enforce-eager", "trust-remote-code", "enable-prefix-caching",
                            "no-enable-prefix-caching", "enable-chunked-prefill",
                            "enable-lora", "enable-expert-parallel", "disable-log-requests",
                            "disable-log-stats", "enable-auto-tool-choice",
                            "disable-custom-all-reduce"})
_VLLM_SHORT = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size",
               "-dp": "--data-parallel-size", "-q": "--quantization"}


def human_int(name: str, text: Any) -> int:
    """vLLM's ``human_readable_int`` (``vllm/engine/arg_utils.py``): ``16384``; ``25.6k``
    (lowercase: x1000, decimals allowed); ``16K`` (uppercase: x1024, integers only)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", str(text).strip())
    if not m:
        return to_int(name, text, 1)
    number, suffix = m.groups()
    if suffix.islower():
        return to_int(name, int(float(number) * 10 ** (3 * " kmgt".index(suffix))), 1)
    if "." in number:
        raise MemfitError.bad_value(name, text, f"an integer before {suffix} (vLLM allows "
                                    f"decimals only with k, m, g: {number}{suffix.lower()})")
    return to_int(name, int(number) * 2 ** (10 * " KMGT".index(suffix)), 1)


def _quantization(r: Reader, name: str, value: Any) -> None:
    key = str(value).strip().lower()
    if key in ("none", ""):
        r.note(name, value, "weights as stored")
        return
    if key not in QUANTIZATION:
        raise MemfitError.bad_value(name.lstrip("-"), value, ", ".join(sorted(QUANTIZATION)))
    r.use(name, value, "weights", QUANTIZATION[key])


def _common(r: Reader, name: str, value: Any) -> bool:
    """Options vLLM and SGLang share under the same meaning; True when handled."""
    if name in ("kv-cache-dtype",):
        key = str(value).strip().lower()
        if key not in _KV:
            raise MemfitError.bad_value(name, value, ", ".join(_KV))
        if _KV[key] is None:
            r.note(f"--{name}", value, "KV cache in the model's dtype (memfit's default)")
        else:
            r.use(f"--{name}", value, "kv_dtype", _KV[key])
        return True
    if name == "dtype":
        key = str(value).strip().lower()
        if key not in _DTYPES:
            raise MemfitError.bad_value(name, value, ", ".join(_DTYPES))
        if _DTYPES[key] is None:
            r.note("--dtype", value, "weights in the config's torch_dtype (memfit's default)")
        elif "weights" not in r.t.options:
            r.use("--dtype", value, "weights", _DTYPES[key])
        return True
    if name in ("quantization",):
        _quantization(r, f"--{name}", value)
        return True
    return False


def read_vllm(argv: list[str]) -> Translation:
    """``argv``: the words after ``vllm serve`` (or after the api_server module)."""
    r = Reader("vllm", "infer")
    r.use("vllm", "serve", "engine", "vllm")
    words, pairs = long_options(argv, _VLLM_SWITCHES, _VLLM_SHORT)
    if words:
        r.model("MODEL", words[0])
        for extra in words[1:]:
            r.ignore("argument", extra, "a positional word vllm serve does not take")
    context = None
    for name, value in pairs:
        flag = f"--{name}"
        if name == "model":
            r.model(flag, value)
        elif name == "max-model-len":
            context = human_int(name, value)
            r.use(flag, value, "max_model_len", context)
        elif name in ("max-num-seqs", "max-num-batched-tokens"):
            r.use(flag, value, name.replace("-", "_"), to_int(name, value, 1))
        elif name == "enforce-eager":
            if value is True or str(value).lower() == "true":
                r.use(flag, True, "enforce_eager", True)
            else:
                r.note(flag, value, "CUDA graphs (vLLM's default)")
        elif name == "tensor-parallel-size":
            r.use(flag, value, "tp", to_int(name, value, 1))
        elif name == "pipeline-parallel-size":
            r.use(flag, value, "pp", to_int(name, value, 1))
        elif name == "data-parallel-size":
            r.note(flag, value, "per-GPU memory unchanged (each replica holds its own copy)")
        elif name == "gpu-memory-utilization":
            r.use(flag, value, "gpu_memory_utilization", to_float(name, value, 0.01, 1.0))
        elif name == "block-size":
            r.use(flag, value, "block_size", to_int(name, value, 1))
        elif _common(r, name, value):
            continue
        elif name in _VLLM_IGNORED:
            r.ignore(flag, value, _VLLM_IGNORED[name])
        elif name in _NO_MEMORY:
            r.ignore(flag, value, "no effect on GPU memory")
        else:
            r.ignore(flag, value, "not an option memfit reads for vLLM; if it changes memory, "
                     "the estimate does not include it")
    return _finish(r, context)


def _finish(r: Reader, context: int | None) -> Translation:
    if r.t.model is None:
        raise MemfitError("model: missing from the command; allowed: the model after "
                          "`serve` or --model (--model-path for SGLang)", field="model",
                          value=None, allowed="a model id or path")
    # the startup question: one request of max_model_len tokens must fit the KV cache (the
    # engine checks it); memfit's prompt/generate defaults stay unless the length is shorter
    if context is not None and context < 1024 + 128:
        r.t.options["prompt"] = max(1, context - 128) if context > 128 else context
        r.t.options["generate"] = 128 if context > 128 else 0
    return r.done()


_SGLANG_OPTIONS = {  # launch_server flag -> (memfit option, kind: f float, i int, b switch)
    "mem-fraction-static": ("mem_fraction_static", "f"),
    "max-running-requests": ("max_running_requests", "i"),
    "chunked-prefill-size": ("chunked_prefill_size", "i"),
    "cuda-graph-max-bs": ("cuda_graph_max_bs", "i"),
    "disable-cuda-graph": ("disable_cuda_graph", "b"),
}
_SGLANG_IGNORED = {
    "enable-dp-attention": "data-parallel attention changes the KV split, not modelled",
    "dp-size": "per-GPU memory unchanged (each replica holds its own copy)",
    "ep-size": "expert parallelism, not modelled apart for SGLang",
    "enable-lora": "LoRA adapter slots reserve extra GPU memory, not counted",
    "speculative-algorithm": "a draft model adds its weights and KV cache, not counted",
}
_SGLANG_SHORT = {"--tp": "--tp-size", "--tensor-parallel-size": "--tp-size",
                 "--pipeline-parallel-size": "--pp-size", "--model": "--model-path",
                 "--dp": "--dp-size", "--data-parallel-size": "--dp-size", "--ep": "--ep-size"}
_SGLANG_SWITCHES = frozenset({"trust-remote-code", "disable-cuda-graph", "enable-dp-attention",
                              "enable-lora", "disable-radix-cache", "enable-torch-compile"})


def read_sglang(argv: list[str]) -> Translation:
    """``argv``: the words after ``python -m sglang.launch_server``."""
    r = Reader("sglang", "infer")
    r.use("sglang.launch_server", "", "engine", "sglang")
    words, pairs = long_options(argv, _SGLANG_SWITCHES, _SGLANG_SHORT)
    for extra in words:
        r.ignore("argument", extra, "a positional word launch_server does not take")
    context = None
    for name, value in pairs:
        flag = f"--{name}"
        if name == "model-path":
            r.model(flag, value)
        elif name == "context-length":
            context = human_int(name, value)
            r.use(flag, value, "context_length", context)
        elif name == "tp-size":
            r.use(flag, value, "tp", to_int(name, value, 1))
        elif name == "pp-size":
            r.use(flag, value, "pp", to_int(name, value, 1))
        elif name in _SGLANG_OPTIONS:  # memfit's --engine sglang options, same names
            option, kind = _SGLANG_OPTIONS[name]
            r.use(flag, value, option, to_float(name, value, 0.01, 1.0) if kind == "f"
                  else True if kind == "b" else to_int(name, value, 1))
        elif name == "page-size":
            r.ignore(flag, value, "SGLang rounds its pool down to whole pages: at most "
                     "page-size - 1 tokens fewer than memfit's")
        elif _common(r, name, value):
            continue
        elif name in _SGLANG_IGNORED:
            r.ignore(flag, value, _SGLANG_IGNORED[name])
        elif name in _NO_MEMORY or name in ("disable-radix-cache",):
            r.ignore(flag, value, "no effect on GPU memory")
        else:
            r.ignore(flag, value, "not an option memfit reads for SGLang; if it changes "
                     "memory, the estimate does not include it")
    if "mem_fraction_static" not in r.t.options:
        r.note("--mem-fraction-static", "(not given)", "SGLang's own rule from the GPU's "
               "memory and TP (memfit applies it with --gpu)")
    return _finish(r, context)
