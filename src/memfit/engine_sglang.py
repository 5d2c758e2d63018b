"""SGLang (``python -m sglang.launch_server``) as it starts: its defaults, its token pool and its
verdict.

Modelled on SGLang 0.5 (``python/sglang/srt/server_args.py`` and
``python/sglang/srt/model_executor/model_runner.py`` at commit 469c63e):

* ``server_args.py _handle_gpu_memory_settings``: ``chunked_prefill_size`` and
  ``cuda_graph_max_bs`` by the GPU's memory (``gpu_mem``, nvidia-smi's total in MiB) and TP;
  then, unless ``--mem-fraction-static`` is given,
  ``reserved = 512 + max(chunk, 2048) * 1.5 + cuda_graph_max_bs * 2 + tp * pp / 8 * 1024``
  MiB (at least 10 GiB on cards of more than 60 GiB) and
  ``mem_fraction_static = round((gpu_mem - reserved) / gpu_mem, 3)``;
* ``_generate_cuda_graph_batch_sizes``: ``[1, 2, 4, 8, 12] + range(16, 257, 8) +
  range(272, 512, 16) + range(512, max_bs + 1, 32)`` up to ``cuda_graph_max_bs``;
* ``model_runner.py profile_max_num_token``: ``total`` is the free memory measured before the
  weights load (after the CUDA context and NCCL), ``available`` the free memory after;
  ``rest = available - total * (1 - mem_fraction_static)``; ``max_total_num_tokens =
  rest // cell_size`` with ``cell_size = kv_heads/TP * head_dim * layers * 2 * bytes``, MLA
  ``(kv_lora_rank + qk_rope_head_dim) * layers * bytes``; ``<= 0`` raises "Not enough
  memory. Please try to increase --mem-fraction-static.";
* ``init_memory_pool``: ``max_num_reqs = min(max(tokens / context_len * 512, 2048), 4096)``
  (``--max-running-requests`` when given), a ``ReqToTokenPool`` of ``(max_num_reqs + 1) x
  (context_len + 4)`` int32, and ``max_running_requests = min(max_num_reqs, tokens // 2)``;
  the log line "KV Cache is allocated. #tokens: N, K size: x GB, V size: y GB" (GB = GiB);
* ``hf_transformers_utils.py get_context_length``: the first of ``max_sequence_length,
  seq_length, max_seq_len, model_max_length, max_position_embeddings`` times the RoPE factor,
  unless the scaling names ``original_max_position_embeddings`` or is ``llama3``; a larger
  ``--context-length`` is refused (``model_config.py``: "User-specified context_length ... is
  greater than the derived context_len", unless SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN).

SGLang starts with any pool of at least one token: a request longer than the pool or the
context length is rejected when it arrives, and a batch larger than the pool waits in the
queue. The verdict (``fits``) is SGLang's own: it starts, or it does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from .arch import ModelSpec, rope_scaling
from .memory.breakdown import Estimate, Phase, Term
from .memory.kv_cache import resolve_kv_dtype
from .memory.overhead import DEFAULT_OVERHEADS
from .memory.weights import layer_kind_counts, model_weights, resolve_weights_option
from .workload import InferenceOptions

__all__ = ["sglang_estimate", "sglang_defaults", "sglang_context_length",
           "cuda_graph_batch_sizes"]

MiB = 2**20
GiB = 2**30
_CONTEXT_KEYS = ("max_sequence_length", "seq_length", "max_seq_len", "model_max_length",
                 "max_position_embeddings")
# nvidia-smi total minus cudaMemGetInfo's total (480 MiB on an H100: validation/gpu), as in
# engines.VLLMDefaults.driver_reserved_bytes
_DRIVER_RESERVED = 480 * MiB
# cuBLAS workspaces and other non-torch memory after the pool (engines.VLLMDefaults)
_NON_TORCH = 192 * MiB
_NCCL_PEER = 432 * MiB


def sglang_defaults(gpu_mib: float | None, tp: int, pp: int = 1) -> tuple[int, int, float]:
    """(chunked_prefill_size, cuda_graph_max_bs, mem_fraction_static) as
    ``server_args.py _handle_gpu_memory_settings`` sets them on a CUDA GPU of ``gpu_mib``
    MiB (nvidia-smi's total; None: SGLang's fallback 4096, 160 and 0.88)."""
    if gpu_mib is None:
        return 4096, 160, 0.88
    small_tp = tp < 4
    if gpu_mib < 20 * 1024:  # T4, 4080
        chunk, bs = 2048, 8
    elif gpu_mib < 35 * 1024:  # A10, 4090, 5090
        chunk, bs = 2048, 24 if small_tp else 80
    elif gpu_mib < 60 * 1024:  # A100-40GB, L40
        chunk, bs = 4096, 32 if small_tp else 160
    elif gpu_mib < 160 * 1024:  # H100, A100-80GB, H20, H200
        chunk, bs = 8192, 256 if small_tp else 512
    else:  # B200, MI300
        chunk, bs = 16384, 512
    return chunk, bs, _fraction(gpu_mib, chunk, bs, tp, pp)


def _fraction(gpu_mib: float, chunk: int, bs: int, tp: int, pp: int) -> float:
    """``mem_fraction_static = round((gpu_mem - reserved) / gpu_mem, 3)``, ``reserved`` in MiB
    (``server_args.py _handle_gpu_memory_settings``)."""
    reserved = 512 + max(chunk, 2048) * 1.5 + bs * 2
    reserved += tp * pp / 8 * 1024
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return round((gpu_mib - reserved) / gpu_mib, 3)


def cuda_graph_batch_sizes(max_bs: int) -> list[int]:
    """The decode batch sizes SGLang captures (``server_args.py
    _generate_cuda_graph_batch_sizes``, no speculative decoding)."""
    sizes = ([1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 512, 16))
             + list(range(512, max_bs + 1, 32)))
    return [b for b in sizes if b <= max_bs]


def sglang_context_length(spec: ModelSpec) -> int:
    """The model's context as SGLang derives it (``hf_transformers_utils.py
    get_context_length``)."""
    c = dict(spec.length_keys)
    rope = rope_scaling(spec)
    factor = 1.0
    if isinstance(rope, Mapping) and rope.get("factor"):
        factor = float(rope["factor"])
        if "original_max_position_embeddings" in rope or rope.get("rope_type") == "llama3":
            factor = 1.0
    for key in _CONTEXT_KEYS:
        if key in c:
            return int(factor * c[key])
    return spec.max_position_embeddings or spec.learned_positions or 2048


def _cell_bytes(spec: ModelSpec, o: InferenceOptions, kv_bytes: Fraction | float, start: int,
                stop: int) -> int:
    """Bytes per token over the GPU's layers (``profile_max_num_token``'s ``cell_size``)."""
    n = sum(layer_kind_counts(spec, start, stop).values())
    if spec.mla is not None:
        return int((spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim) * n * kv_bytes)
    heads = max(1, spec.num_kv_heads // o.tp)
    return int(heads * spec.head_dim * n * 2 * kv_bytes)


def _budget(o: InferenceOptions, card: Any) -> dict[str, Any]:
    """SGLang's settings on ``card``: the GPU-memory rule, then the user's flags."""
    gpu_mib = None if card is None else card.memory_bytes / MiB
    chunk, bs, frac = sglang_defaults(gpu_mib, o.tp, o.pp)
    chunk = o.chunked_prefill_size or chunk
    bs = o.cuda_graph_max_bs or bs
    source = "--mem-fraction-static"
    if o.mem_fraction_static is None:
        frac = sglang_defaults(gpu_mib, o.tp, o.pp)[2] if gpu_mib is None else _fraction(
            gpu_mib, chunk, bs, o.tp, o.pp)
        source = "SGLang's default rule (server_args.py _handle_gpu_memory_settings)"
    else:
        frac = o.mem_fraction_static
    graphs = [] if o.disable_cuda_graph else cuda_graph_batch_sizes(bs)
    return {"chunk": chunk, "max_bs": bs, "fraction": frac, "fraction_source": source,
            "graph_sizes": graphs}


def sglang_estimate(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    """SGLang on the GPU of ``--gpu`` (without one: the scenario's own KV cache)."""
    from . import engines as E

    notes: list[str] = E._check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "vllm")
    kvdt = resolve_kv_dtype(o.kv_dtype, rw.compute_dtype, "vllm")
    b = E._act_bytes(rw.compute_dtype)
    card = E._card(o)
    s = _budget(o, card)
    derived = sglang_context_length(spec)
    ctx_len = o.context_length or derived
    stages = E._stages(spec, o.pp)
    lo, hi = stages[-1]  # the last stage holds the head (the profile's logits)
    w = model_weights(spec, rw, tp=o.tp, ep=o.ep, start=lo, stop=hi, first=len(stages) == 1,
                      last=True)
    cell = _cell_bytes(spec, o, kvdt.bytes_per_element, lo, hi)
    # the largest decode batch captured at start (its logits and sampler rows) beside one
    # forward of a full prefill chunk
    seqs = max(1, min(s["max_bs"], o.max_running_requests or s["max_bs"]))
    # (logits all-gathered over TP as in vLLM: logits_processor.py _get_logits,
    # tensor_model_parallel_all_gather)
    act, act_what = E._vllm_activation_peak(spec, o, b, s["chunk"], seqs, True, E.VLLM_DEFAULTS)
    world = o.tp * o.pp
    r = _pool(o, card, s, w.total, cell, ctx_len, world)
    v = _verdict(spec, o, r, s, derived, ctx_len, cell)
    return _result(spec, o, rw, kvdt, card, s, r, v, w, act, act_what, cell, ctx_len, derived,
                   notes, world)


def _pool(o: InferenceOptions, card: Any, s: dict[str, Any], W: int, cell: int, ctx_len: int,
          world: int) -> dict[str, Any]:
    """The token pool (``profile_max_num_token``), the request table and what runs beside."""
    ctx = DEFAULT_OVERHEADS.cuda_context_bytes
    nccl = DEFAULT_OVERHEADS.nccl_bytes if world > 1 else 0
    non_torch = _NON_TORCH + _NCCL_PEER * min(world - 1, 2)
    # SGLang's own estimate of its CUDA graphs: 2 MiB per unit of cuda_graph_max_bs (the
    # reserve rule of server_args.py); none when disabled
    graphs = 2 * s["max_bs"] * MiB if s["graph_sizes"] else 0
    r: dict[str, Any] = {"ctx": ctx, "nccl": nccl, "non_torch": non_torch, "graphs": graphs}
    if card is None:
        r.update(tokens=None, total_before=None)
        return r
    total_before = card.memory_bytes - _DRIVER_RESERVED - ctx - nccl
    avail = total_before - W
    rest = avail - total_before * (1 - s["fraction"])
    tokens = max(0, int(rest // cell)) if cell else 0
    if o.max_running_requests:
        reqs = o.max_running_requests
    else:
        reqs = min(max(int(tokens / ctx_len * 512), 2048), 4096)
    req_pool = (reqs + 1) * (ctx_len + 4) * 4
    r.update(tokens=tokens, total_before=total_before, avail_after_weights=avail,
             rest=rest, max_num_reqs=reqs, req_pool=req_pool,
             max_running=min(reqs, tokens // 2), reserve=int(total_before * (1 - s["fraction"])))
    return r


def _verdict(spec: ModelSpec, o: InferenceOptions, r: dict[str, Any], s: dict[str, Any],
             derived: int, ctx_len: int, cell: int) -> dict[str, Any]:
    """SGLang's start checks (``blockers``) and what it does with the request (``warnings``:
    rejected or queued requests, said in the verdict but SGLang starts)."""
    T = o.prompt + o.generate
    B: list[str] = []
    Wn: list[str] = []
    if o.context_length and o.context_length > derived:
        B.append(f"--context-length {o.context_length} is above the model's {derived}: SGLang "
                 "refuses it (SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 overrides)")
    if T > ctx_len:
        Wn.append(f"prompt + generate = {T} tokens is above the context length {ctx_len}: "
                  "SGLang rejects the request")
    out: dict[str, Any] = {"blockers": B, "warnings": Wn, "starts": None}
    if r["tokens"] is None:
        return out
    if r["avail_after_weights"] <= 0:
        B.append("the weights do not fit the free memory: SGLang runs out of memory loading "
                 "them")
    elif r["tokens"] <= 0:
        B.append(f"no KV pool: the free memory after the weights "
                 f"({r['avail_after_weights'] / GiB:.2f} GiB) is within the "
                 f"{r['reserve'] / GiB:.2f} GiB that mem_fraction_static {s['fraction']} keeps "
                 "back: \"Not enough memory. Please try to increase --mem-fraction-static.\"")
    out["starts"] = not B
    pool = r["tokens"]
    if out["starts"] and T <= ctx_len and (o.prompt >= pool - 1 or T > pool):
        Wn.append(f"the pool holds {pool:,} tokens, too few for one request of {T}: SGLang "
                  "rejects it (the prompt must be below max_req_input_len = "
                  "min(context_len, max_total_num_tokens) - 1, and its tokens fit the pool)")
    conc = min(pool // T if T else 0, r["max_running"])
    out["scenario_concurrency"] = conc
    out["max_concurrency"] = round(pool / ctx_len, 2) if ctx_len else 0.0
    if out["starts"] and 0 < conc < o.batch:
        Wn.append(f"the pool holds {conc} sequences of {T} tokens at once (max_running_requests "
                  f"{r['max_running']}), fewer than the batch of {o.batch}: SGLang queues the "
                  "rest")
    return out


def _terms(o: InferenceOptions, s: dict[str, Any], r: dict[str, Any], kv: int, cell: int,
           act: int, act_what: str) -> list[Term]:
    src_pool = ("sglang python/sglang/srt/model_executor/model_runner.py "
                "profile_max_num_token; server_args.py _handle_gpu_memory_settings")
    if r["tokens"] is None:
        kv_term = Term("kv_cache", kv, "B * T * cell_size", f"{o.batch} * "
                       f"{o.prompt + o.generate} * {cell}", src_pool + " (no --gpu: the "
                       "scenario's own tokens)")
    else:
        kv_term = Term(
            "kv_cache", kv, "floor((M_free - W - M_free * (1 - f)) / cell_size) * cell_size",
            f"floor(({r['total_before']} - {r['avail_after_weights']} ... ) / {cell}) = "
            f"{r['tokens']} tokens, f = {s['fraction']}", src_pool)
    return [kv_term,
            Term("activations", act, "forward of chunked_prefill_size tokens",
                 f"chunk {s['chunk']}: {act_what}",
                 "modelled as vLLM's profile forward (engines._vllm_activation_peak)")]


def _result(spec: ModelSpec, o: InferenceOptions, rw: Any, kvdt: Any, card: Any,
            s: dict[str, Any], r: dict[str, Any], v: dict[str, Any], w: Any, act: int,
            act_what: str, cell: int, ctx_len: int, derived: int, notes: list[str],
            world: int) -> Estimate:
    from . import engines as E

    T = o.prompt + o.generate
    kv = o.batch * T * cell if r["tokens"] is None else r["tokens"] * cell
    phases = (Phase("load", {"weights": w.total}),
              Phase("serve", {"weights": w.total, "kv_cache": kv, "activations": act}))
    overheads = {"cuda_context": r["ctx"], "non_torch": r["non_torch"],
                 "cuda_graphs": r["graphs"], "req_to_token_pool": r.get("req_pool", 0)}
    if r["nccl"]:
        overheads["nccl_buffers"] = r["nccl"]
    oterms = [Term(name, n, name, f"{n}", "sglang (see docs/inference.md)")
              for name, n in overheads.items()]
    extras: dict[str, Any] = {
        "blockers": v["blockers"], "warnings": v["warnings"],
        "context_length": ctx_len, "max_model_len": ctx_len, "derived_context_length": derived,
        "mem_fraction_static": s["fraction"], "mem_fraction_static_source": s["fraction_source"],
        "chunked_prefill_size": s["chunk"], "cuda_graph_max_bs": s["max_bs"],
        "cuda_graph_batch_sizes": len(s["graph_sizes"]), "cuda_graph_bytes": r["graphs"],
        "non_torch_bytes": r["non_torch"], "kv_bytes_per_token": cell,
    }
    total = sum(phases[1].components.values()) + sum(overheads.values())
    if v["starts"] and card is not None and total > card.usable_bytes:
        # what runs outside the static fraction does not fit what it leaves: SGLang starts
        # loading, then runs out of memory capturing CUDA graphs or at the first full chunk
        v["starts"] = False
        v["blockers"].append(
            f"the memory outside mem_fraction_static {s['fraction']} "
            f"({(card.usable_bytes - w.total - kv - r['ctx'] - r['nccl']) / GiB:.2f} GiB) is "
            f"less than the chunked prefill ({act / GiB:.2f} GiB), CUDA graphs "
            f"({r['graphs'] / GiB:.2f} GiB), request table and non-torch memory need: SGLang "
            "runs out of memory at CUDA-graph capture or the first full chunk; lower "
            "--mem-fraction-static or --chunked-prefill-size")
    if r["tokens"] is not None:
        k_bytes = kv if spec.mla is not None else kv // 2
        extras.update({
            "starts": v["starts"], "kv_cache_tokens": r["tokens"],
            "max_concurrency": v["max_concurrency"],
            "scenario_concurrency": v["scenario_concurrency"],
            "max_running_requests": r["max_running"], "req_to_token_pool_bytes": r["req_pool"],
            "fits_concurrently": v["scenario_concurrency"] >= o.batch,
            "serves_request": not v["warnings"],
            "log_line": (f"KV Cache is allocated. #tokens: {r['tokens']}, "
                         + (f"KV size: {kv / GiB:.2f} GB" if spec.mla is not None else
                            f"K size: {k_bytes / GiB:.2f} GB, V size: {k_bytes / GiB:.2f} GB")),
        })
    if rw.note:
        notes.append(rw.note)
    assumptions = {"engine": "sglang 0.5 (launch_server; server_args.py / model_runner.py at "
                             "469c63e)",
                   "weights": rw.name, "weights_source": rw.source, "kv_dtype": kvdt.name,
                   "mem_fraction_static": f"{s['fraction']} ({s['fraction_source']})",
                   "notes": notes}
    terms = (*w.terms, *_terms(o, s, r, kv, cell, act, act_what), *oterms)
    return Estimate(mode="infer", model=spec.name, options=E._options_dict(o), phases=phases,
                    overheads=overheads, terms=terms, assumptions=assumptions,
                    gpu=card.name if card else None,
                    gpu_memory_bytes=card.usable_bytes if card else None, extras=extras)
