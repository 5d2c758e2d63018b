"""``llama-server`` / ``llama-cli`` command lines and Ollama Modelfiles (with Ollama's
environment settings), read into ``memfit infer --engine llamacpp``.

llama.cpp's names and defaults are from ``common/arg.cpp`` (``common_params_parser_init``)
and ``common/common.h`` (``common_params``), llama.cpp b5000-b6000: ``-m/--model``,
``-hf/--hf-repo repo[:quant]``, ``-c/--ctx-size`` (default 0 = the model's training
context in current builds; 4096 in builds before late 2025), ``-np/--parallel`` (slots
sharing the ``n_ctx`` cells: the total cache is ``n_ctx``),
``-ngl/--gpu-layers/--n-gpu-layers``, ``-b/--batch-size`` (2048),
``-ub/--ubatch-size`` (512), ``-ctk/--cache-type-k`` and ``-ctv/--cache-type-v`` (f16),
``-fa/--flash-attn``, ``-nkvo/--no-kv-offload``, ``--cpu-moe``, ``-ot/--override-tensor``,
``--mmproj``, ``--lora``, ``-md/--model-draft``. memfit's llama.cpp model holds ``batch x
(prompt + generate)`` cells, so ``-c N`` is read as batch 1, prompt N, generate 0.

Ollama's names are from ``api/types.go`` (``Options``/``Runner``: ``num_ctx``, ``num_gpu``
layers, ``num_batch``) and ``envconfig/config.go`` (``OLLAMA_CONTEXT_LENGTH`` 4096,
``OLLAMA_NUM_PARALLEL`` 1, ``OLLAMA_KV_CACHE_TYPE`` f16, ``OLLAMA_FLASH_ATTENTION``), Ollama
0.9: it allocates ``num_ctx x OLLAMA_NUM_PARALLEL`` cells (``llm/server.go``), and its library
models are Q4_K_M GGUF files unless the tag says otherwise. They map to memfit's
``--engine ollama`` options (``--num-ctx``, ``--num-parallel``, ``-ngl``, ``-ub``,
``-ctk``/``-ctv``, ``--flash-attn``; :mod:`memfit.engine_ollama`).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, long_options, to_int

__all__ = ["read_llamacpp", "read_ollama", "OLLAMA_TAGS", "looks_like_ollama"]

_SHORT = {"-m": "--model", "-c": "--ctx-size", "-ngl": "--gpu-layers",
          "--n-gpu-layers": "--gpu-layers", "-b": "--batch-size", "-ub": "--ubatch-size",
          "-ctk": "--cache-type-k", "-ctv": "--cache-type-v", "-fa": "--flash-attn",
          "-np": "--parallel", "-hf": "--hf-repo", "-hfr": "--hf-repo", "-t": "--threads",
          "-n": "--n-predict", "-nkvo": "--no-kv-offload", "-ot": "--override-tensor",
          "-md": "--model-draft", "-a": "--alias", "-sm": "--split-mode",
          "-ts": "--tensor-split", "-mg": "--main-gpu", "-p": "--prompt",
          "-tb": "--threads-batch", "-s": "--seed", "-kvu": "--kv-unified",
          "-cnv": "--conversation", "-fit": "--fit"}
_SWITCHES = frozenset({"no-kv-offload", "cpu-moe", "mlock", "no-mmap", "jinja", "cont-batching",
                       "no-cont-batching", "kv-unified", "conversation", "no-warmup", "verbose",
                       "embedding", "metrics", "no-webui", "interactive", "mmap", "log-disable"})
_KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
_NO_MEMORY = frozenset(("threads", "threads-batch", "host", "port", "alias", "jinja",
                        "chat-template", "n-predict", "seed", "temp", "top-k", "top-p",
                        "min-p", "repeat-penalty", "prompt", "conversation", "api-key",
                        "cont-batching", "no-cont-batching", "kv-unified", "metrics",
                        "no-webui", "verbose", "log-disable", "interactive", "system-prompt",
                        "reasoning-format", "no-warmup", "slots", "timeout", "ctx-shift"))
_IGNORED = {
    "no-kv-offload": "the KV cache stays in CPU memory: less GPU memory than counted",
    "override-tensor": "tensors placed by pattern (often experts on the CPU): less GPU memory "
                       "than counted",
    "mlock": "host memory only", "no-mmap": "host memory only", "mmap": "host memory only",
    "mmproj": "a vision projector's weights and buffers, not counted",
    "lora": "adapter weights on the GPU, not counted",
    "model-draft": "a draft model's weights and cache, not counted",
    "main-gpu": "which GPU holds the output and scratch buffers; memfit reports the most "
                "loaded GPU",
    "embedding": "embedding mode: no generation, a smaller compute buffer",
}


def _kv(r: Reader, flag: str, value: Any, option: str = "kv_dtype") -> None:
    key = str(value).lower()
    if key not in _KV_TYPES:
        raise MemfitError.bad_value(flag.lstrip("-"), value, ", ".join(_KV_TYPES))
    r.use(flag, value, option, key)


def _hf_repo(r: Reader, value: Any) -> None:
    repo, _, quant = str(value).partition(":")
    r.ignore("--hf-repo", value, "a GGUF repository memfit does not download; give "
             "--model (a catalog name or the .gguf file) beside")
    if quant:
        r.use("--hf-repo", value, "weights", quant.upper())


def _ubatch(r: Reader, flag: str, value: Any) -> None:
    r.use(flag, value, "ubatch_size", to_int(flag.lstrip("-"), value, 1))


def _flash(r: Reader, flag: str, value: Any) -> None:
    """``-fa on|off|auto`` (a bare ``-fa`` was ``on`` before b6300)."""
    key = str(value).lower()
    mapped = {"true": "on", "1": "on", "on": "on", "enabled": "on", "false": "off",
              "0": "off", "off": "off", "disabled": "off", "auto": "auto"}.get(key)
    if mapped is None:
        raise MemfitError.bad_value(flag.lstrip("-"), value, "on, off, auto")
    r.use(flag, value, "flash_attn", mapped)


def read_llamacpp(program: str, argv: list[str]) -> Translation:
    r = Reader(program, "infer")
    r.use(program, "", "engine", "llamacpp")
    words, pairs = long_options(argv, _SWITCHES, _SHORT)
    for extra in words:
        r.ignore("argument", extra, f"a positional word {program} does not take")
    for name, value in pairs:
        flag = f"--{name}"
        if name == "model":
            r.model(flag, value)
        elif name == "ctx-size":  # 0: the model's training context, as llama.cpp reads it
            r.use(flag, value, "ctx_size", to_int(name, value, 0))
        elif name == "batch-size":
            r.use(flag, value, "batch_size", to_int(name, value, 1))
        elif name == "gpu-layers":
            ngl = str(value).lower()
            if ngl in ("all", "auto", "-1"):
                r.note(flag, value, "every layer on the GPU (memfit's default)")
            else:
                r.use(flag, value, "n_gpu_layers", to_int(name, value, 0))
        elif name in ("cache-type-k", "cache-type-v"):
            _kv(r, flag, value, name.replace("-", "_"))
        elif name == "tensor-split":
            r.use(flag, value, "tensor_split", str(value))
        elif name == "split-mode":
            r.use(flag, value, "split_mode", str(value).lower())
        elif name == "n-cpu-moe":
            r.use(flag, value, "n_cpu_moe", to_int(name, value, 0))
        elif name == "cpu-moe" and value is True:
            r.note(flag, value, "--n-cpu-moe = every layer (all expert tensors in host RAM)")
            r.t.per_model["n_cpu_moe"] = "num_layers"
        elif name == "ubatch-size":
            _ubatch(r, flag, value)
        elif name == "flash-attn":
            _flash(r, flag, value)
        elif name == "parallel":
            r.note(flag, value, "slots share the --ctx-size cells: the total cache is unchanged")
        elif name == "hf-repo":
            _hf_repo(r, value)
        elif name in _IGNORED:
            r.ignore(flag, value, _IGNORED[name])
        elif name in _NO_MEMORY:
            r.ignore(flag, value, "no effect on GPU memory")
        else:
            r.ignore(flag, value, f"not an option memfit reads for {program}; if it changes "
                     "memory, the estimate does not include it")
    if "ctx_size" not in r.t.options:  # common_params::n_ctx = 0 (4096 before late 2025)
        r.use("--ctx-size", "(not given)", "ctx_size", 0)
        r.t.understood[-1]["option"] += " (llama.cpp's default: the model's training context)"
    ctx = r.t.options["ctx_size"]
    if 0 < ctx < 1024 + 128:  # a short window: a request that fits in it
        r.t.options["prompt"] = max(1, ctx - 128) if ctx > 128 else ctx
        r.t.options["generate"] = 128 if ctx > 128 else 0
    return r.done()


# Ollama library tags -> (memfit catalog name, GGUF file type of the tag's default file),
# from ollama.com/library/<name>/tags (the default tag is Q4_K_M)
OLLAMA_TAGS = {
    "llama3.1:8b": "llama-3.1-8b", "llama3.1:70b": "llama-3.1-70b", "llama3.1": "llama-3.1-8b",
    "llama3.2:1b": "llama-3.2-1b", "llama3.2:3b": "llama-3.2-3b", "llama3.2": "llama-3.2-3b",
    "llama3.3:70b": "llama-3.3-70b", "llama3.3": "llama-3.3-70b", "llama3:8b": "llama-3-8b",
    "llama3": "llama-3-8b", "mistral:7b": "mistral-7b-v0.3", "mistral": "mistral-7b-v0.3",
    "qwen2.5:7b": "qwen2.5-7b", "qwen2.5:14b": "qwen2.5-14b", "qwen2.5:32b": "qwen2.5-32b",
    "qwen2.5:72b": "qwen2.5-72b", "qwen2.5": "qwen2.5-7b", "qwen3:8b": "qwen3-8b",
    "qwen3:14b": "qwen3-14b", "qwen3:32b": "qwen3-32b", "qwen3": "qwen3-8b",
    "gemma2:9b": "gemma-2-9b", "gemma2:27b": "gemma-2-27b", "gemma2:2b": "gemma-2-2b",
    "phi4": "phi-4", "phi4:14b": "phi-4", "tinyllama": "tinyllama-1.1b",
}
_TAG_QUANT = re.compile(r"-(?P<q>(q\d_k_[sml]|q\d_k|q\d_\d|f16|bf16|fp16|q8_0))$", re.I)
_ENV = re.compile(r"^(?:export\s+)?(?P<key>OLLAMA_[A-Z_]+)=(?P<value>.*)$")


def looks_like_ollama(text: str) -> bool:
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("#")]
    return bool(lines) and all(
        _ENV.match(x) or re.match(r"^(FROM|PARAMETER|TEMPLATE|SYSTEM|ADAPTER|LICENSE|MESSAGE"
                                  r"|REQUIRES|\"\"\"|.*\"\"\"$)", x, re.I) for x in lines[:3])


def _from(r: Reader, value: str) -> None:
    tag = value.strip()
    base = _TAG_QUANT.sub("", tag.lower())
    quant = _TAG_QUANT.search(tag.lower())
    if tag.endswith(".gguf") or tag.startswith(("/", "./", "../", "~")):
        r.model("FROM", tag)
        return
    if base not in OLLAMA_TAGS:  # --model beside names it (complete() says so when missing)
        r.ignore("FROM", tag, "a tag memfit maps to no catalog model (" +
                 ", ".join(sorted(OLLAMA_TAGS)) + "); give --model and --weights beside")
        return
    r.model("FROM", tag)
    r.t.model = OLLAMA_TAGS[base]
    r.t.understood[-1]["option"] = f"MODEL {r.t.model}"
    r.use("FROM", tag, "weights", quant["q"].upper() if quant else "Q4_K_M")


def _parameter(r: Reader, line: str, env: dict[str, str]) -> None:
    parts = line.split(None, 2)  # PARAMETER name value (the value may hold spaces and quotes)
    if len(parts) != 3:
        raise MemfitError.bad_value("PARAMETER", line[:80], "PARAMETER name value")
    _, key, value = parts
    value = value.strip().strip("\"'")
    name = f"PARAMETER {key}"
    if key == "num_ctx":
        r.use(name, value, "num_ctx", to_int(name, value, 1))
    elif key == "num_gpu":
        r.use(name, value, "n_gpu_layers", to_int(name, value, 0))
    elif key == "num_batch":  # Ollama sets n_batch and n_ubatch to it (llm/server.go)
        _ubatch(r, name, value)
    else:
        r.ignore(name, value, "no effect on GPU memory (sampling and generation settings)")


def read_ollama(text: str) -> Translation:
    r = Reader("ollama", "infer")
    r.use("Modelfile", "", "engine", "ollama")
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV.match(line)
        if m:
            env[m["key"]] = m["value"].strip().strip("\"'")
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            _from(r, rest)
        elif word == "PARAMETER":
            _parameter(r, line, env)
        elif word == "ADAPTER":
            r.ignore("ADAPTER", rest, "adapter weights on the GPU, not counted")
        elif word in ("TEMPLATE", "SYSTEM", "LICENSE", "MESSAGE", "REQUIRES"):
            r.ignore(word, rest[:40], "no effect on GPU memory")
        elif not line.startswith('"""') and not line.endswith('"""'):
            continue  # a line inside a multi-line TEMPLATE/SYSTEM block
    return _ollama_env(r, env)


def _ollama_env(r: Reader, env: dict[str, str]) -> Translation:
    for key, value in env.items():
        if key == "OLLAMA_CONTEXT_LENGTH" and "num_ctx" not in r.t.options:
            r.use(key, value, "num_ctx", to_int(key, value, 1))
        elif key == "OLLAMA_NUM_PARALLEL":
            r.use(key, value, "num_parallel", to_int(key, value, 1))
        elif key == "OLLAMA_KV_CACHE_TYPE":  # one type for K and V (memfit's -ctk, -ctv)
            _kv(r, key, value, "cache_type_k")
            r.t.options["cache_type_v"] = r.t.options["cache_type_k"]
        elif key == "OLLAMA_FLASH_ATTENTION":
            _flash(r, key, "on" if value.lower() in ("1", "true") else "off")
        else:
            r.ignore(key, value, "no GPU memory effect memfit models (scheduling, paths, "
                     "reserved headroom)")
    if "OLLAMA_FLASH_ATTENTION" not in env:
        r.note("OLLAMA_FLASH_ATTENTION", "(not set)", "off, Ollama's default (memfit "
               "--engine ollama; newer releases turn it on per model)")
    t = r.done()
    if "num_ctx" not in t.options:
        r.note("num_ctx", "(not given)", "Ollama's default context (4096 cells in 0.9, "
               "2048 in 0.5: --ollama-version; newer releases pick it by the GPU's memory)")
    if "n_gpu_layers" not in t.options:
        r.note("num_gpu", "(not given)", "Ollama's own choice of the layers that fit "
               "(llm/memory.go EstimateGPULayers), modelled with --gpu")
    return t
