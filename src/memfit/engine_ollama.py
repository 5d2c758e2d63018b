"""Ollama: llama.cpp with Ollama's defaults and its own choice of the layers to offload.

Modelled on Ollama's ``llm/memory.go EstimateGPULayers`` and ``fs/ggml/ggml.go GraphSize``
(the releases whose ``GraphSize(context, batch, numParallel, kvCacheType)`` sizes the graph,
0.5 - 0.9; the newer "Ollama engine" runner that sizes by a trial allocation is not
modelled):

* the context of one model load is ``num_ctx * num_parallel`` cells (``GraphSize``:
  ``context *= numParallel``): ``num_ctx`` defaults to 2048 in 0.5 (``api.DefaultOptions``),
  4096 in 0.9 (``envconfig.ContextLength``) and, in the newest releases (0.34:
  ``ContextLength`` 0, "default: 4k/32k/256k based on VRAM", docs.ollama.com/context-length),
  4096 below 24 GiB of VRAM, 32768 below 48 GiB, else 262144; ``OLLAMA_NUM_PARALLEL`` 1;
  ``num_batch`` (the llama.cpp ``n_batch``/``n_ubatch``) to 512;
* flash attention only with ``OLLAMA_FLASH_ATTENTION=1`` (``--flash-attn on``), and the KV
  type of ``OLLAMA_KV_CACHE_TYPE`` (``-ctk``; q8_0 / q4_0) only with flash attention, else
  f16 (``server.go``: "kv cache type not supported by model" / quantized cache needs FA);
* layers (``EstimateGPULayers``): ``kv = ctx * (d_k + d_v) * kv_heads * bytes`` per layer;
  ``graphPartialOffload`` / ``graphFullOffload`` from ``GraphSize`` (the ``llama`` formulas;
  ``qwen2`` its own); the GPU must hold ``MinimumMemory`` (457 MiB on CUDA) + the graph + two
  layers; then layer after layer ``blk.i + kv_i`` while ``free > used + graph + layer``; the
  output layer (``output_norm`` + ``output``, or ``token_embd`` when tied) last; the graph
  of a full or partial offload is added at the end. The log line is
  ``offload to cuda layers.requested=-1 layers.model=L+1 layers.offload=N ...
  memory.required.full=... memory.required.partial=... memory.required.kv=...``.

The buffers llama.cpp then allocates with that ``-ngl`` are :func:`engines.llamacpp_estimate`'s.
Ollama starts whatever the card (it offloads fewer layers); the verdict is whether the
buffers it allocates fit the GPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .arch import ModelSpec
from .memory.breakdown import Estimate
from .memory.weights import gguf_layer_bytes, memo, model_weights, resolve_weights_option
from .workload import InferenceOptions

__all__ = ["ollama_estimate", "ollama_graph_size", "ollama_layers", "default_num_ctx",
           "OLLAMA_NUM_CTX", "OLLAMA_VRAM_CTX"]

MiB = 2**20
#: num_ctx by release: api.DefaultOptions NumCtx 2048 (0.5); envconfig.ContextLength 4096
OLLAMA_NUM_CTX = {"0.5": 2048, "0.9": 4096}
#: the newest releases: (VRAM below, num_ctx) steps, else 262144 (docs.ollama.com/context-length)
OLLAMA_VRAM_CTX = ((24 * 2**30, 4096), (48 * 2**30, 32768))
_CUDA_MINIMUM = 457 * MiB  # discover/gpu.go: CudaMinimumMemory / rocmMinimumMemory
_DRIVER_RESERVED = 480 * MiB  # memory a fresh card reports used (engines.VLLMDefaults)
_KV_BYTES = {"q8_0": 1.0, "q4_0": 0.5}  # ggml.go kvCacheBytesPerElement; f16: 2


def default_num_ctx(version: str, card: Any) -> int:
    """Ollama's default context for ``version``: fixed before 0.34, by the GPU's memory after
    (no GPU: the smallest step)."""
    if version in OLLAMA_NUM_CTX:
        return OLLAMA_NUM_CTX[version]
    vram = card.memory_bytes if card is not None else 0
    return next((ctx for below, ctx in OLLAMA_VRAM_CTX if vram < below), 262144)


def ollama_graph_size(spec: ModelSpec, context: int, batch: int) -> tuple[int, int]:
    """(partialOffload, fullOffload) of ``fs/ggml/ggml.go GraphSize`` for ``context`` cells
    (num_ctx * num_parallel) and ``batch = min(num_ctx, num_batch)``: the ``llama`` formulas
    (also used here for architectures it does not special-case), ``qwen2``'s own."""
    emb, V = spec.hidden_size, spec.vocab_size
    heads, kvh, dh = spec.num_heads, spec.num_kv_heads, spec.head_dim
    if spec.model_type == "qwen2":
        full = max(4 * batch * (emb + V), 4 * batch * (1 + 2 * emb + context + context * heads))
        partial = max(4 * batch * (emb + V) + emb * V * 105 // 128,
                      4 * (batch * (1 + 2 * emb + context * (1 + heads)) + emb * (1 + context)))
        return partial, full
    full = max(4 * batch * (1 + 4 * emb + context * (1 + heads)), 4 * batch * (emb + V))
    partial = 4 * batch * emb + max(
        4 * batch * (1 + emb + max(context, emb)) + emb * emb * 9 // 16
        + 4 * context * (batch * heads + dh * kvh),
        4 * batch * (emb + V) + emb * V * 105 // 128)
    return partial, full


def ollama_layers(spec: ModelSpec, rw: Any, free: int, context: int, batch: int,
                  kv_bytes: float, num_gpu: int | None) -> dict[str, Any]:
    """``llm/memory.go EstimateGPULayers`` for one GPU with ``free`` bytes."""
    L = spec.num_layers
    kv_layer = int(context * 2 * spec.head_dim * spec.num_kv_heads * kv_bytes)
    weights, output = _layer_sizes(spec, rw)
    blk = [w + kv_layer for w in weights]
    partial, full = ollama_graph_size(spec, context, batch)
    graph = max(partial, full)
    used = _CUDA_MINIMUM + blk[0]
    count = 0
    fits_any = free >= graph + _CUDA_MINIMUM + 2 * blk[0]
    for i in range(L):
        if num_gpu is not None and count >= num_gpu:
            break
        if fits_any and free > used + graph + blk[i]:
            used += blk[i]
            count += 1
        else:
            fits_any = False
    overflow = sum(blk[count:])
    if fits_any and (num_gpu is None or count < num_gpu) and free > used + graph + output:
        used += output
        count += 1
    else:
        overflow += output
    loaded = count >= L + 1
    used_total = used + (full if loaded else partial) if count else 0
    return {"offload": count, "model_layers": L + 1, "kv": kv_layer * L,
            "weights": sum(blk) + output, "graph_full": full, "graph_partial": partial,
            "required_partial": used_total, "required_full": used_total + overflow,
            "fully_loaded": loaded}


def _layer_sizes(spec: ModelSpec, rw: Any) -> tuple[list[int], int]:
    """(``blk.i`` bytes of each layer, ``output_norm`` + ``output`` bytes): the GGUF file's
    per-layer sizes (``use_more_bits`` layers differ), memoised per model and file type."""
    def build() -> tuple[list[int], int]:
        L = spec.num_layers
        if rw.file_type is not None:
            per = [sum(lw.components.values()) for lw in gguf_layer_bytes(spec, rw)]
        else:
            per = []
            for i in range(L):
                w = model_weights(spec, rw, start=i, stop=i + 1, first=False, last=False)
                per.append(w.total - w.components.get("buffers", 0))
        out_w = model_weights(spec, rw, start=L, stop=L, first=False, last=True)
        return per, out_w.total - out_w.components.get("buffers", 0)
    return memo(spec, f"ollama_layers:{rw.name}", build)  # type: ignore[no-any-return]


def _fmt(n: int) -> str:
    """format.HumanBytes2: binary units with one decimal."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def ollama_estimate(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    """Ollama with its defaults on ``--gpu``: its layer choice, then llama.cpp's buffers."""
    from . import engines as E

    card = E._card(o)
    num_ctx = o.num_ctx or default_num_ctx(o.ollama_version, card)
    context = num_ctx * o.num_parallel
    fa = o.flash_attn == "on"  # OLLAMA_FLASH_ATTENTION, off unless set
    notes: list[str] = []
    kv_type = o.cache_type_k or o.cache_type_v or o.kv_dtype
    if kv_type and kv_type.lower() not in ("f16", "fp16") and not fa:
        notes.append(f"OLLAMA_KV_CACHE_TYPE={kv_type} needs flash attention "
                     "(OLLAMA_FLASH_ATTENTION=1): Ollama falls back to f16")
        kv_type = None
    weights = o.weights or "Q4_K_M"
    rw = resolve_weights_option(spec, weights, "llamacpp")
    layers = None
    ngl = o.n_gpu_layers
    if card is not None:
        free = card.memory_bytes - _DRIVER_RESERVED
        layers = ollama_layers(spec, rw, free, context, min(num_ctx, o.ubatch_size),
                               _KV_BYTES.get((kv_type or "f16").lower(), 2.0), ngl)
        if ngl is None:
            ngl = layers["offload"]
    inner = replace(o, engine="llamacpp", batch=o.num_parallel, prompt=num_ctx, generate=0,
                    weights=weights, flash_attn="on" if fa else "off",
                    cache_type_k=kv_type, cache_type_v=kv_type, kv_dtype=None,
                    n_gpu_layers=ngl, num_ctx=None, num_parallel=1,
                    # num_batch sets n_batch and n_ubatch alike (llm/server.go)
                    batch_size=o.ubatch_size,
                    ollama_version=InferenceOptions.ollama_version)  # the default object
    est = E.llamacpp_estimate(spec, inner)
    return _wrap(spec, o, est, layers, num_ctx, context, fa, kv_type, weights, notes)


def _wrap(spec: ModelSpec, o: InferenceOptions, est: Estimate, layers: dict[str, Any] | None,
          num_ctx: int, context: int, fa: bool, kv_type: str | None, weights: str,
          notes: list[str]) -> Estimate:
    from . import engines as E

    T = o.prompt + o.generate
    warnings = []
    if T > num_ctx:
        warnings.append(f"prompt + generate = {T} tokens is above num_ctx {num_ctx}: Ollama "
                        "truncates the prompt to the window (set num_ctx / "
                        "OLLAMA_CONTEXT_LENGTH)")
    if o.batch > o.num_parallel:
        warnings.append(f"a batch of {o.batch} with OLLAMA_NUM_PARALLEL={o.num_parallel}: "
                        f"Ollama serves {o.num_parallel} at once and queues the rest")
    extras = dict(est.extras)
    blockers = [b for b in extras.get("blockers", ()) if "context limit" not in b]
    if num_ctx > (spec.max_position_embeddings or num_ctx):
        warnings.append(f"num_ctx {num_ctx} is beyond the model's context limit "
                        f"{spec.max_position_embeddings}")
    extras.update({"blockers": blockers, "warnings": warnings, "num_ctx": num_ctx,
                   "num_parallel": o.num_parallel, "ollama_version": o.ollama_version,
                   "context_length": num_ctx, "max_model_len": num_ctx,
                   "serves_request": not warnings,
                   "fits_concurrently": o.batch <= o.num_parallel})
    requested = -1 if o.n_gpu_layers is None else o.n_gpu_layers
    if layers is not None:
        extras.update({
            "ollama_offload_layers": layers["offload"],
            "ollama_model_layers": layers["model_layers"],
            "memory_required_full_bytes": layers["required_full"],
            "memory_required_partial_bytes": layers["required_partial"],
            "memory_required_kv_bytes": layers["kv"],
            "graph_full_bytes": layers["graph_full"],
            "graph_partial_bytes": layers["graph_partial"],
            "log_line": (f"offload to cuda layers.requested={requested} "
                         f"layers.model={layers['model_layers']} "
                         f"layers.offload={layers['offload']} memory.required.full="
                         f'"{_fmt(layers["required_full"])}" memory.required.partial='
                         f'"{_fmt(layers["required_partial"])}" memory.required.kv='
                         f'"{_fmt(layers["kv"])}" memory.graph.full='
                         f'"{_fmt(layers["graph_full"])}" memory.graph.partial='
                         f'"{_fmt(layers["graph_partial"])}"'),
        })
        notes.append(f"Ollama offloads {layers['offload']} of {layers['model_layers']} layers "
                     "(llm/memory.go EstimateGPULayers)" + (
                         "" if o.n_gpu_layers is None else f"; num_gpu {o.n_gpu_layers} given"))
    assumptions = dict(est.assumptions)
    assumptions.update({
        "engine": f"ollama {o.ollama_version} (llama.cpp runner; num_ctx {num_ctx} x "
                  f"OLLAMA_NUM_PARALLEL {o.num_parallel} = {context} cells)",
        "flash_attn": "on (OLLAMA_FLASH_ATTENTION=1)" if fa else "off (Ollama's default)",
        "weights": assumptions.get("weights", weights),
        "weights_source": ("--weights" if o.weights else
                           "Q4_K_M, the Ollama library's default tag"),
        "notes": list(assumptions.get("notes", ())) + notes})
    return replace(est, options=E._options_dict(o), extras=extras, assumptions=assumptions)
