"""What each serving engine adds to the inference memory model.

* ``hf``: transformers ``generate()`` on PyTorch: weights, a ``DynamicCache`` that grows by
  ``torch.cat``, one prefill of ``B x P`` tokens, then ``G`` decode steps. The peak is what
  ``torch.cuda.max_memory_allocated()`` reports (checked against :mod:`memfit.trace`).
* ``vllm``: reserves ``gpu_memory_utilization`` of the card; after loading the weights it
  profiles one forward pass of ``max_num_batched_tokens`` tokens (and a sampler pass over
  ``max_num_seqs`` rows), subtracts weights, the activation peak and non-torch memory from
  ``util * total`` and divides the rest into KV blocks of ``block_size`` tokens
  (``vllm/v1/worker/gpu_worker.py determine_available_memory``,
  ``vllm/v1/core/kv_cache_utils.py get_num_blocks``).
* ``llamacpp``: GGUF weights; ``n_gpu_layers`` puts the last layers (and, past the layer
  count, the output layer) on the GPU and the rest in host RAM; the token embeddings always
  stay on the CPU; the KV cache has ``n_ctx`` cells per layer on the layer's device; a compute
  buffer sized for one ``n_ubatch`` (``src/llama-model.cpp``, ``src/llama-context.cpp``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from .arch import LayerSpec, ModelSpec
from .dtypes import dtype_bytes
from .errors import MemfitError
from .memory.breakdown import Estimate, LazyTerms, Phase, Term
from .memory.inference_activations import (
    Moment,
    Profile,
    Shapes,
    decode_attention,
    decode_growth_bytes,
    decode_moe,
    decode_moments,
    decode_resident,
    decode_step_residents,
    logits_moments,
    moment_term,
    prefill_moments,
    profile_for,
    softcaps,
)
from .memory.kv_cache import (
    HFCacheRows,
    KVDtype,
    hf_cache_term,
    kv_layout,
    resolve_kv_dtype,
    token_bytes_by_kind,
    tokens_in_layer,
)
from .memory.overhead import overhead_terms
from .memory.weights import (
    ResolvedWeights,
    layer_kind_counts,
    memo,
    model_weights,
    resolve_weights_option,
)
from .parallel import stage_layers
from .workload import InferenceOptions

__all__ = ["VLLM_DEFAULTS", "LLAMACPP_DEFAULTS", "hf_estimate", "vllm_estimate",
           "llamacpp_estimate", "ENGINE_FUNCS"]


@dataclass(frozen=True)
class VLLMDefaults:
    """vLLM V1 engine arguments that size the profile run (``vllm/config/scheduler.py``)."""

    max_num_batched_tokens: int = 8192  # LLM class default on A100/H100-class GPUs
    max_num_seqs: int = 256  # rows of the dummy sampler run
    # cuBLAS/cuBLASLt workspaces and other non-torch allocations made after the baseline
    # snapshot (memory_profiling's non_torch_increase on one GPU), observed ~0.1-0.3 GiB.
    non_torch_bytes: int = 192 * 2**20
    sampler_rows_copies: int = 3  # fp32 [max_num_seqs, V] tensors live in the sampler
    # vLLM sizes util * cudaMemGetInfo's total, which excludes what the driver reserves:
    # nvidia-smi 81559 MiB vs torch total_memory 81079 MiB on an H100 (validation/gpu).
    driver_reserved_bytes: int = 480 * 2**20


@dataclass(frozen=True)
class LlamaCppDefaults:
    """llama.cpp context parameters (``common/common.h``)."""

    n_ubatch: int = 512  # physical batch of the compute graph
    ctx_pad: int = 256  # n_ctx is padded to a multiple of this (flash attention)
    flash_attn: bool = True


VLLM_DEFAULTS = VLLMDefaults()

LLAMACPP_DEFAULTS = LlamaCppDefaults()


# ------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _act_bytes(dtype: str) -> int:
    return int(dtype_bytes(dtype))


def _shapes(spec: ModelSpec, B: int, P: int, b: int, tp: int, n_layers: int,
            softcap: tuple[bool, bool]) -> Shapes:
    m = spec.mla
    d = m.qk_head_dim if m is not None else spec.head_dim
    d_v = m.v_head_dim if m is not None else spec.head_dim
    return Shapes(B=B, P=P, b=b, h=spec.hidden_size, V=-(-spec.vocab_size // tp),
                  heads=spec.num_heads // tp, kv_heads=max(1, spec.num_kv_heads // tp), d=d,
                  d_v=d_v, rope_dim=spec.rope_dim, I=-(-spec.intermediate_size // tp),
                  layers=n_layers, softcap_attn=softcap[0], softcap_logits=softcap[1])


def _moe_width(spec: ModelSpec, tp: int, ep: int) -> tuple[int, int, int]:
    """(top-k, expert width, shared width) on one GPU."""
    if spec.moe is None:
        return 0, 0, 0
    m = spec.moe
    width = m.expert_intermediate_size if ep > 1 else -(-m.expert_intermediate_size // tp)
    return m.top_k, width, -(-m.shared_intermediate_size // tp)


def _stages(spec: ModelSpec, pp: int) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for n in stage_layers(spec.num_layers, pp):
        bounds.append((start, start + n))
        start += n
    return bounds


def _kind_positions(spec: ModelSpec) -> dict[LayerSpec, list[int]]:
    """The sorted layer indices of each layer kind (memoized per model)."""
    def build() -> dict[LayerSpec, list[int]]:
        pos: dict[LayerSpec, list[int]] = {}
        for i, layer in enumerate(spec.layers):
            pos.setdefault(layer, []).append(i)
        return pos
    return memo(spec, "kind_positions", build)


def _last_index_of_kinds(spec: ModelSpec, start: int, stop: int) -> dict[LayerSpec, int]:
    """The last index of each layer kind inside ``layers[start:stop]``."""
    positions = _kind_positions(spec)
    out = {}
    for kind, idx in positions.items():
        j = bisect.bisect_left(idx, stop) - 1
        if j >= 0 and idx[j] >= start:
            out[kind] = idx[j]
    return out


def _sdpa_math(spec: ModelSpec, attn: str, b: int, tp: int = 1) -> bool:
    """Whether SDPA runs its math kernel on a GPU (``S x S`` scores materialised): CUDA has no
    fused fp32 kernel for grouped KV heads, and transformers passes ``enable_gqa`` (no mask,
    head dim <= 256). MLA's ``d_qk != d_v`` runs a fused kernel (memory-efficient / cuDNN).
    The tracer applies the same choice (``memfit.trace.compat``)."""
    if attn != "sdpa" or spec.mla is not None or b != 4 or spec.head_dim > 256:
        return False
    return max(1, spec.num_kv_heads // tp) < spec.num_heads // tp


def _overheads(peak: int, world: int, engine: str) -> tuple[dict[str, int], list[Term]]:
    terms = overhead_terms(peak, world_size=world, engine=engine)
    return {t.name: t.bytes for t in terms}, terms


def _gpu(options: InferenceOptions) -> tuple[str | None, int | None]:
    if options.gpu is None:
        return None, None
    from .hardware import get_gpu

    g = get_gpu(options.gpu)
    return g.name, g.usable_bytes


def _check_context(spec: ModelSpec, options: InferenceOptions) -> list[str]:
    notes = []
    T = options.prompt + options.generate
    if spec.learned_positions and T > spec.learned_positions:
        raise MemfitError.bad_value(
            "prompt", options.prompt,
            f"prompt + generate <= {spec.learned_positions} (the model's learned position "
            f"table n_positions; got {T})")
    if spec.max_position_embeddings and T > spec.max_position_embeddings:
        notes.append(f"context {T} exceeds max_position_embeddings "
                     f"{spec.max_position_embeddings}")
    return notes


# ------------------------------------------------------------------------------------------
# hf: transformers generate()
# ------------------------------------------------------------------------------------------

def _hf_stage(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights, kvdt: KVDtype,
              attn: str, b: int, start: int, stop: int, first: bool, last: bool,
              config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Phases of one GPU (one pipeline stage) under transformers."""
    prof = profile_for(spec)
    tp = o.tp
    B, P, G = o.batch, o.prompt, o.generate
    st = _hf_structure(spec, o, rw, kvdt, start, stop, first, last)
    counts, w = st.counts, st.weights
    W = st.weights_total
    caps = softcaps(spec, config, prof)
    s = _shapes(spec, B, P, b, tp, stop - start, caps)
    kv0 = st.cache.bytes(B, P, 0)
    prefill = _hf_prefill(spec, o, st, kvdt, attn, b, s, kv0, start, first, last)
    kv_p, m_p, _ = max(prefill, key=lambda x: x[2])
    phases = [Phase("load", {"weights": W, "activations": 0}),
              Phase("prefill", {"weights": W, "kv_cache": kv_p, "activations": m_p.activations,
                                "logits": m_p.logits})]
    moments = {m.name: m.activations + m.logits for _, m, _ in prefill}
    peak_m = m_p
    kvG = 0
    if G > 0:
        s1 = _shapes(spec, B, 1, b, tp, stop - start, caps)
        kvG = st.cache.bytes(B, P, G)
        cands: list[tuple[int, Moment, int, Any]] = [
            (kvG, m, 0, None) for m in decode_moments(spec, prof, s, T=P + G, last_stage=last)]
        cands += _hf_decode(spec, o, st, kvdt, attn, b, s, s1, first, last)
        kv_d, m_d, shift, ctx = max(cands, key=lambda x: x[0] + x[1].activations + x[2]
                                    + x[1].logits)
        phases.append(Phase("decode", {"weights": W, "kv_cache": kv_d,
                                       "activations": m_d.activations + shift,
                                       "logits": m_d.logits}))
        for kv_c, m, sh, _ in cands:
            moments[m.name] = kv_c - kvG + m.activations + sh + m.logits
        if phases[-1].peak_bytes > phases[1].peak_bytes:
            peak_m = m_d if ctx is None else _shifted(m_d, shift, spec, prof, s1, attn, first,
                                                      *ctx)
    total = max(p.peak_bytes for p in phases)

    def terms() -> list[Term]:
        """The derivations, formatted only when read (Estimate.terms is LazyTerms)."""
        out = list(st.weight_terms)
        if G > 0:
            out.append(hf_cache_term(spec, counts, B, P, 0, kvdt, tp, kv0, "kv_cache_prefill"))
            out.append(hf_cache_term(spec, counts, B, P, G, kvdt, tp, kvG, "kv_cache"))
        else:
            out.append(hf_cache_term(spec, counts, B, P, 0, kvdt, tp, kv0, "kv_cache"))
        out.append(moment_term(peak_m, spec.model_type, peak_m.activations + peak_m.logits))
        return out

    return {"phases": phases, "terms": terms, "weights": w, "moments": moments,
            "peak_moment": peak_m.name, "total": total,
            "kv_bytes_per_token": st.kv_bytes_per_token}


def _hf_prefill(spec: ModelSpec, o: InferenceOptions, st: _HFStructure, kvdt: KVDtype,
                attn: str, b: int, s: Shapes, kv0: int, start: int, first: bool,
                last: bool) -> list[tuple[int, Moment, int]]:
    """The prefill's candidate moments as (KV bytes, moment, total with the weights): each
    layer kind's moments at its last layer on the stage, then the logits'."""
    prof = profile_for(spec)
    tp, B, P, W = o.tp, o.batch, o.prompt, st.weights_total
    k, width, shared = _moe_width(spec, tp, o.ep)
    math = _sdpa_math(spec, attn, b, tp)
    out: list[tuple[int, Moment, int]] = []
    for kind, idx, after, one in st.lasts:
        kv_at = kv0 - after.bytes(B, P, 0)
        own = one.bytes(B, P, 0)
        for m in prefill_moments(spec, prof, s, attn=attn, first_stage=first, layer=kind,
                                 dequant_bytes=st.weights.dequant_bytes, moe_k=k,
                                 moe_width=width, shared_width=shared, sdpa_math=math,
                                 layer_input=idx > start or not first):
            kv = kv_at if m.kv_full else kv_at - own
            out.append((kv, m, W + kv + m.activations + m.logits))
    for m in logits_moments(spec, s, logits=o.logits, last_stage=last):
        out.append((kv0, m, W + kv0 + m.activations + m.logits))
    return out


def _hf_decode(spec: ModelSpec, o: InferenceOptions, st: _HFStructure, kvdt: KVDtype,
               attn: str, b: int, s: Shapes, s1: Shapes, first: bool,
               last: bool) -> list[tuple[int, Moment, int, Any]]:
    """The decode steps' candidate moments besides the last step's logits, as (KV bytes,
    moment, shift, context), at the first and the last step: the cache's growth, and each
    layer kind's attention (and MoE block) at its first and last layer on the stage. A
    layer's attention differs between those two layers only by the resident bytes it sits
    on, so it is evaluated once per kind and step on none; ``shift`` is the resident bytes
    to add and ``context`` (kind, tokens, math path) rebuilds the shifted moment
    (:func:`_shifted`) for the one candidate that turns out the peak."""
    prof = profile_for(spec)
    tp, B, P, G = o.tp, o.batch, o.prompt, o.generate
    k, width, shared = _moe_width(spec, tp, o.ep)
    grow = decode_growth_bytes(spec, prof, s1)
    math = _sdpa_math(spec, attn, b, tp)
    cands: list[tuple[int, Moment, int, Any]] = []
    for t in sorted({1, G}):
        # the cache at its largest: one layer's old and new tensors during torch.cat
        kv_t, name, inner = _growth_peak(spec, st, B, P, t, kvdt, tp)
        base = decode_resident(s, P + t, last)
        with_in, without_in = decode_step_residents(spec, prof, s1, attn, first, P + t)
        res = base + grow + (with_in if inner or not first else without_in)
        cands.append((kv_t, Moment(name, res, formula=(
            "cache of every layer + the old K, V of the layer being grown (torch.cat "
            "keeps both until the assignment) + the step's tensors"),
            substituted=f"{kv_t} + {res}"), 0, None))
        # each layer kind's attention at its first and last layer: the layers before it
        # hold step t's cache, those after it step t-1's (sliding layers the prefill's
        # P rows until their first decode step)
        for kind, one, splits in st.growth:
            tokens = tokens_in_layer(kind, P, t)
            own = one.bytes(B, P, t)
            att = decode_attention(spec, prof, s1, attn=attn, layer=kind, tokens=tokens,
                                   first_stage=first, sdpa_math=math, resident=0)
            for before_rows, after_rows, inner_layer in splits:
                kv_a = before_rows.bytes(B, P, t) + own + after_rows.bytes(B, P, t - 1)
                lin = inner_layer or not first
                res = base + (with_in if lin else without_in)
                ctx = (kind, tokens, math)
                cands.extend((kv_a, m, res, ctx) for m in att)
                if kind.moe and k:
                    cands.append((kv_a, decode_moe(
                        spec, prof, s1, attn=attn, tokens=tokens, moe_k=k,
                        moe_width=width, shared_width=shared, resident=res), 0, None))
    return cands


def _shifted(m: Moment, resident: int, spec: ModelSpec, prof: Profile, s1: Shapes, attn: str,
             first: bool, kind: LayerSpec, tokens: int, math: bool) -> Moment:
    """A decode attention moment evaluated on no resident bytes, moved onto ``resident``
    (every such moment is ``resident + its own tensors``); its derivation is the one
    :func:`decode_attention` gives with ``resident``, rebuilt only when read."""
    def substituted() -> str:
        full = decode_attention(spec, prof, s1, attn=attn, layer=kind, tokens=tokens,
                                first_stage=first, sdpa_math=math, resident=resident)
        return next(x.substituted for x in full if x.name == m.name)
    return Moment(m.name, m.activations + resident, kv_full=m.kv_full, logits=m.logits,
                  formula=m.formula, substituted=substituted)


@dataclass(frozen=True)
class _HFStructure:
    """What one stage's estimate needs that depends on the model and layout only (not on
    batch, prompt or generate): computed once per (model, weights, KV dtype, layout, stage)."""

    counts: dict[LayerSpec, int]  # layers of each kind on the stage
    weights: Any  # ModelWeights
    weights_total: int
    weight_terms: tuple[Term, ...]
    rows: dict[LayerSpec, tuple[int, int]]  # (K, V) row bytes per token, per kind
    cache: HFCacheRows  # the stage's cache bytes in closed form
    # per kind: its last index, the cache of the layers after it and of one such layer
    lasts: tuple[tuple[LayerSpec, int, HFCacheRows, HFCacheRows], ...]
    # per kind: one layer's cache, and at its first and last index the cache of the layers
    # before and after it and whether it is not the stage's first layer
    growth: tuple[tuple[LayerSpec, HFCacheRows,
                        tuple[tuple[HFCacheRows, HFCacheRows, bool], ...]], ...]
    kv_bytes_per_token: int


def _hf_structure(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights, kvdt: KVDtype,
                  start: int, stop: int, first: bool, last: bool) -> _HFStructure:
    tp, ep = o.tp, o.ep

    def build() -> _HFStructure:
        counts = layer_kind_counts(spec, start, stop)
        w = model_weights(spec, rw, tp=tp, ep=ep, start=start, stop=stop, first=first,
                          last=last)
        lasts = _last_index_of_kinds(spec, start, stop)
        firsts = _first_index_of_kinds(spec, start, stop)
        rows = token_bytes_by_kind(spec, counts, kvdt, tp)

        def cache(c: dict[LayerSpec, int]) -> HFCacheRows:
            return HFCacheRows(c, rows)
        growth = []
        for kind in [k for k, n in counts.items() if n]:
            # a full layer grows the cache: the last one sees the most; a sliding layer past
            # its window shrinks it at the first decode step: the first one sees the most
            # (and the attention of a full layer at the first decode step is largest at the
            # first one, while the sliding layers after it still hold the prefill's rows)
            idxs = sorted({firsts[kind], lasts[kind]})
            splits = []
            for idx in idxs:
                before = layer_kind_counts(spec, start, idx)
                splits.append((cache(before), cache(layer_kind_counts(spec, idx + 1, stop)),
                               any(before.values())))
            growth.append((kind, cache({kind: 1}), tuple(splits)))
        return _HFStructure(
            counts=counts, weights=w, weights_total=w.total, weight_terms=tuple(w.terms),
            rows=rows, cache=cache(counts),
            lasts=tuple((kind, idx, cache(layer_kind_counts(spec, idx + 1, stop)),
                         cache({kind: 1})) for kind, idx in lasts.items()),
            growth=tuple(growth),
            kv_bytes_per_token=_kv_token_bytes(spec, counts, kvdt, tp, "hf"))
    # rw and kvdt are functions of (spec, o.weights, o.kv_dtype) under hf: key on the
    # options (cheap to hash) rather than the resolved formats
    return memo(spec, ("hf_structure", o.weights, o.kv_dtype, tp, ep, start, stop, first, last),
                build)


def _growth_peak(spec: ModelSpec, st: _HFStructure, B: int, P: int, t: int, kvdt: KVDtype,
                 tp: int) -> tuple[int, str, bool]:
    """The cache at its largest during decode step ``t``: while layer l grows, the layers
    before it hold ``c_t`` rows and those after it ``c_{t-1}``; layer l holds its old tensors
    and the new ones (a ``DynamicLayer`` frees the old K before concatenating V, so the new K,
    the old V and the new V meet; a sliding layer keeps both old tensors until it reassigns
    them). Checked at the first and the last layer of each kind. Returns the bytes, the
    moment's name and whether the layer is not the stage's first (its input is alive)."""
    best, best_name, best_inner = 0, "", False
    rows = st.rows
    for kind, one, splits in st.growth:
        k_row, v_row = rows[kind]
        c_new = tokens_in_layer(kind, P, t)
        own_old = one.bytes(B, P, t - 1)
        for before_rows, after_rows, inner in splits:
            before = before_rows.bytes(B, P, t)
            after = after_rows.bytes(B, P, t - 1)
            if kind.attention == "sliding" and kind.window is not None:
                own = own_old + B * c_new * (k_row + v_row)
            else:
                # torch.cat of K (old K, V and the new K), then of V (the old K is gone: the
                # new K, the old V and the new V)
                own = own_old + max(B * c_new * k_row, B * c_new * v_row + B * k_row)
            total = before + after + own
            # inner: not the stage's first layer
            if total > best or (total == best and inner and not best_inner):
                best, best_name = total, f"decode/cache_growth_step{'1' if t == 1 else '_last'}"
                best_inner = inner
    return best, best_name, best_inner


def _first_index_of_kinds(spec: ModelSpec, start: int, stop: int) -> dict[LayerSpec, int]:
    """The first index of each layer kind inside ``layers[start:stop]``."""
    positions = _kind_positions(spec)
    out = {}
    for kind, idx in positions.items():
        j = bisect.bisect_left(idx, start)
        if j < len(idx) and idx[j] < stop:
            out[kind] = idx[j]
    return out


def _kv_token_bytes(spec: ModelSpec, counts: dict[LayerSpec, int], kvdt: KVDtype, tp: int,
                    engine: str) -> int:
    return sum(n * kv_layout(spec, kind, engine=engine, tp=tp).token_bytes(kvdt)
               for kind, n in counts.items())


def hf_estimate(spec: ModelSpec, o: InferenceOptions,
                config: Mapping[str, Any] | None = None) -> Estimate:
    """transformers ``generate()`` (see the module docstring)."""
    notes = _check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "hf")
    kvdt = resolve_kv_dtype(o.kv_dtype, rw.compute_dtype, "hf")
    b = _act_bytes(rw.compute_dtype)
    prof = profile_for(spec)
    attn = o.attn
    if attn == "sdpa" and softcaps(spec, config, prof)[0]:
        attn = "eager"
        notes.append("soft-capped attention: transformers runs it eagerly (SDPA has no "
                     "softcap), as from_pretrained picks")
    elif attn == "sdpa" and prof.sinks:
        attn = "eager"
        notes.append("attention sinks: transformers runs gpt-oss eagerly (its SDPA path "
                     "has no sinks), as from_pretrained picks")
    stages = _stages(spec, o.pp)
    best = None
    for i, (start, stop) in enumerate(stages):
        r = _hf_stage(spec, o, rw, kvdt, attn, b, start, stop, i == 0, i == len(stages) - 1,
                      config)
        if best is None or r["total"] > best["total"]:
            best, best_stage = r, i
    assert best is not None
    world = o.tp * o.pp
    peak = best["total"]
    overheads, oterms = _overheads(peak, world, "hf")
    gpu_name, gpu_bytes = _gpu(o)
    if rw.note:
        notes.append(rw.note)
    assumptions = {
        "engine": "hf (transformers generate, DynamicCache)",
        "weights": rw.name, "kv_dtype": kvdt.name, "activation_dtype": rw.compute_dtype,
        "attention": attn, "most_loaded_stage": best_stage,
        "sdpa_math_path": _sdpa_math(spec, attn, b, o.tp),
        "notes": notes,
    }
    extras = {"peak_moment": best["peak_moment"], "moments": best["moments"],
              "weights_by_component": best["weights"].components,
              "kv_bytes_per_token": best["kv_bytes_per_token"]}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o),
                    phases=tuple(best["phases"]), overheads=overheads,
                    terms=LazyTerms(lambda: (*best["terms"](), *oterms)),
                    assumptions=assumptions, gpu=gpu_name,
                    gpu_memory_bytes=gpu_bytes, extras=extras)


_OPTION_NAMES = tuple(f.name for f in fields(InferenceOptions))


def _options_dict(o: InferenceOptions) -> dict[str, Any]:
    return {name: getattr(o, name) for name in _OPTION_NAMES}


# ------------------------------------------------------------------------------------------
# vllm
# ------------------------------------------------------------------------------------------

def _vllm_activation_peak(spec: ModelSpec, o: InferenceOptions, b: int, tokens: int,
                          V_rank: int, last: bool, d: VLLMDefaults) -> tuple[int, str]:
    """Peak torch memory of vLLM's profile forward (flash attention: no S x S scores)."""
    tp = o.tp
    M = tokens
    h = spec.hidden_size
    k, width, shared = _moe_width(spec, tp, o.ep)
    I = -(-spec.intermediate_size // tp)
    q = (spec.num_heads // tp) * (spec.mla.qk_head_dim if spec.mla else spec.head_dim)
    kv = max(1, spec.num_kv_heads // tp) * spec.head_dim
    # residual + hidden + QKVParallelLinear output + attention output
    attn = M * (2 * h + q + 2 * kv + q) * b
    # residual + hidden + MergedColumnParallelLinear (gate_up) + SiluAndMul output
    mlp = M * (2 * h + 3 * I) * b if spec.num_dense_layers else 0
    moe = M * (2 * h + k * (h + 3 * width) + 2 * h) * b if spec.is_moe else 0
    body = max(attn, mlp, moe)
    logits = 0
    if last:
        rows = min(d.max_num_seqs, M)
        logits = rows * V_rank * (b + 4 * d.sampler_rows_copies)
    if body >= logits:
        return body, "forward of max_num_batched_tokens (flash attention, fused gate_up)"
    return logits, "sampler over max_num_seqs rows (fp32 logits and sampling copies)"


def vllm_estimate(spec: ModelSpec, o: InferenceOptions,
                  config: Mapping[str, Any] | None = None) -> Estimate:
    """vLLM's reservation: weights + profiled activations + a KV pool of whole blocks."""
    d = VLLM_DEFAULTS
    notes = _check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "vllm")
    kvdt = resolve_kv_dtype(o.kv_dtype, rw.compute_dtype, "vllm")
    b = _act_bytes(rw.compute_dtype)
    stages = _stages(spec, o.pp)
    gpu_name, gpu_bytes = _gpu(o)
    T = o.prompt + o.generate
    block = o.block_size
    best: dict[str, Any] | None = None
    for i, (start, stop) in enumerate(stages):
        first, last = i == 0, i == len(stages) - 1
        w = model_weights(spec, rw, tp=o.tp, ep=o.ep, start=start, stop=stop, first=first,
                          last=last)
        counts = layer_kind_counts(spec, start, stop)
        tokens = min(d.max_num_batched_tokens, max(d.max_num_batched_tokens, 1))
        act, act_what = _vllm_activation_peak(spec, o, b, tokens,
                                              -(-spec.vocab_size // o.tp), last, d)
        # bytes of one block across this GPU's layers; sliding layers need at most
        # ceil(W / block) + 1 blocks per sequence
        block_bytes = block * _kv_token_bytes(spec, counts, kvdt, o.tp, "vllm")
        need_blocks = 0
        for kind, n in counts.items():
            if not n:
                continue
            toks = T
            if kind.attention == "sliding" and kind.window is not None:
                toks = min(T, kind.window + block)
            need_blocks = max(need_blocks, -(-toks // block))
        needed = o.batch * need_blocks * block_bytes
        non_torch = d.non_torch_bytes
        if gpu_bytes is not None:
            requested = int(o.gpu_memory_utilization * (gpu_bytes - d.driver_reserved_bytes))
            avail = requested - w.total - act - non_torch
            blocks = max(0, avail // block_bytes) if block_bytes else 0
            pool = blocks * block_bytes
        else:
            requested = avail = blocks = pool = None  # type: ignore[assignment]
        kv = needed if pool is None else max(pool, needed)
        total = w.total + kv + act
        r: dict[str, Any] = {"w": w, "act": act, "act_what": act_what, "block_bytes": block_bytes,
             "needed": needed, "need_blocks": need_blocks, "blocks": blocks, "pool": pool,
             "requested": requested, "kv": kv, "total": total, "stage": i,
             "non_torch": non_torch}
        if best is None or total > best["total"]:
            best = r
    assert best is not None
    world = o.tp * o.pp
    phases = (Phase("load", {"weights": best["w"].total}),
              Phase("serve", {"weights": best["w"].total, "kv_cache": best["kv"],
                              "activations": best["act"]}))
    # The weights and the KV pool are a few exact allocations made once; the caching
    # allocator's slack concerns the transient activations only.
    overheads, oterms = _overheads(best["act"], world, "vllm")
    oterms = [t if t.name != "allocator_slack" else
              Term(t.name, t.bytes, "s * A_profile", t.substituted, t.source,
                   note="vLLM allocates weights and the KV pool once: slack on activations")
              for t in oterms]
    overheads["non_torch"] = best["non_torch"]
    oterms.append(Term("non_torch", best["non_torch"], "C_nt", str(best["non_torch"]),
                       "vLLM memory_profiling non_torch_increase (cuBLAS workspaces)"))
    terms = list(best["w"].terms)
    extras: dict[str, Any] = {
        "block_size": block, "kv_block_bytes": best["block_bytes"],
        "kv_bytes_per_token": best["block_bytes"] // block if block else 0,
        "profile_activation_bytes": best["act"], "profile_peak": best["act_what"],
        "max_num_batched_tokens": d.max_num_batched_tokens, "max_num_seqs": d.max_num_seqs,
        "blocks_per_sequence": best["need_blocks"],
    }
    if best["pool"] is not None:
        blocks = best["blocks"]
        extras.update({
            "requested_bytes": best["requested"],
            "kv_cache_blocks": blocks,
            "kv_cache_tokens": blocks * block,
            "max_concurrency": blocks // best["need_blocks"] if best["need_blocks"] else 0,
            "fits_concurrently": best["needed"] <= best["pool"],
        })
        terms.append(Term(
            "kv_cache", best["kv"],
            "blocks = floor((u * (M_gpu - M_drv) - W - A_profile - C_nt) / (block * "
            "bytes_per_token)); KV = max(blocks, B * ceil(T / block)) * block bytes",
            f"floor(({o.gpu_memory_utilization} * ({gpu_bytes} - {d.driver_reserved_bytes}) - "
            f"{best['w'].total} - "
            f"{best['act']} - {best['non_torch']}) / {best['block_bytes']}) = {blocks}",
            "vllm/v1/worker/gpu_worker.py determine_available_memory; "
            "vllm/v1/core/kv_cache_utils.py"))
    else:
        terms.append(Term("kv_cache", best["kv"], "B * ceil(T / block) * block bytes",
                          f"{o.batch} * {best['need_blocks']} * {best['block_bytes']}",
                          "vllm/v1/core/kv_cache_utils.py (no --gpu: the pool is sized by "
                          "the scenario, not by gpu_memory_utilization)"))
    terms.append(Term("activations", best["act"], "profile forward peak",
                      best["act_what"], "vllm/v1/worker/gpu_model_runner.py profile_run"))
    assumptions = {"engine": "vllm (V1, paged KV cache)", "weights": rw.name,
                   "kv_dtype": kvdt.name, "gpu_memory_utilization": o.gpu_memory_utilization,
                   "most_loaded_stage": best["stage"], "notes": notes}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o), phases=phases,
                    overheads=overheads, terms=tuple(terms + oterms), assumptions=assumptions,
                    gpu=gpu_name, gpu_memory_bytes=gpu_bytes, extras=extras)


# ------------------------------------------------------------------------------------------
# llama.cpp
# ------------------------------------------------------------------------------------------

def llamacpp_estimate(spec: ModelSpec, o: InferenceOptions,
                      config: Mapping[str, Any] | None = None) -> Estimate:
    """llama.cpp with ``n_gpu_layers`` offloaded (see the module docstring)."""
    d = LLAMACPP_DEFAULTS
    for name in ("tp", "pp", "ep"):
        if getattr(o, name) > 1:  # llama.cpp splits layers across GPUs (--split-mode layer)
            raise MemfitError.bad_value(name, getattr(o, name), "1 with --engine llamacpp "
                                        "(memfit models llama.cpp on one GPU; its multi-GPU "
                                        "layer split is not modelled)")
    notes = _check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "llamacpp")
    kvdt = resolve_kv_dtype(o.kv_dtype, "fp16", "llamacpp")
    L = spec.num_layers
    ngl = L + 1 if o.n_gpu_layers is None else o.n_gpu_layers
    on_gpu = min(ngl, L)
    start = L - on_gpu  # llama.cpp offloads the last layers first (i_gpu_start)
    output_on_gpu = ngl > L
    gpu_w = model_weights(spec, rw, start=start, stop=L, first=False, last=output_on_gpu)
    all_cpu_w = model_weights(spec, rw, start=0, stop=start, first=True, last=not output_on_gpu)
    gpu_w_total = gpu_w.total - gpu_w.components.get("buffers", 0)
    host_w_total = all_cpu_w.total - all_cpu_w.components.get("buffers", 0)
    # the KV cache: n_ctx cells for every layer, padded
    n_ctx = o.batch * (o.prompt + o.generate)
    n_ctx = -(-n_ctx // d.ctx_pad) * d.ctx_pad
    kv_gpu = kv_host = 0
    all_counts = layer_kind_counts(spec, 0, L)
    for kind, n_gpu in layer_kind_counts(spec, start, L).items():
        n_all = all_counts[kind]
        cells = n_ctx
        if kind.attention == "sliding" and kind.window:
            cells = min(n_ctx, -(-(kind.window + d.n_ubatch) // d.ctx_pad) * d.ctx_pad)
        per = kv_layout(spec, kind, engine="llamacpp").token_bytes(kvdt) * cells
        kv_gpu += n_gpu * per
        kv_host += (n_all - n_gpu) * per
    # compute buffer: one ubatch through the widest node (FFN or output) plus the KQ mask
    n_ub = min(d.n_ubatch, max(1, o.batch * o.prompt))
    h, V = spec.hidden_size, spec.vocab_size
    I = max(spec.intermediate_size, (spec.moe.expert_intermediate_size * spec.moe.top_k)
            if spec.moe else 0)
    # f32 nodes of one ubatch at the FFN: gate, up and their product (3 I) beside the layer
    # input, the attention output added to it, its norm and the FFN output (4 h); at the
    # head: the logits of every row (graph_reserve plans n_outputs = n_ubatch) and the norm
    ffn = 4 * n_ub * (3 * I + 4 * h)
    out = 4 * n_ub * (V + 2 * h)
    if d.flash_attn:
        attn = 2 * n_ctx * n_ub
    else:
        attn = 4 * n_ctx * n_ub * spec.num_heads
    compute = max(ffn, out if output_on_gpu else 0) + attn if on_gpu else 0
    phases = (Phase("load", {"weights": gpu_w_total}),
              Phase("decode", {"weights": gpu_w_total, "kv_cache": kv_gpu,
                               "activations": compute}))
    peak = phases[1].peak_bytes
    overheads, oterms = _overheads(peak, 1, "llamacpp")
    host = host_w_total + kv_host
    gpu_name, gpu_bytes = _gpu(o)
    MiB = 2**20
    terms = list(gpu_w.terms) + [
        Term("kv_cache", kv_gpu, "n_layers_gpu * n_ctx * [row(a_kv*d) K + row(a_kv*d) V]",
             f"{on_gpu} layers * {n_ctx} cells ({kvdt.name})",
             "llama.cpp src/llama-kv-cache.cpp (one cell per context token per layer)"),
        Term("compute_buffer", compute,
             "4*n_ub*max(3*I + 4*h, V + 2*h) + KQ mask 2*n_ctx*n_ub (flash attention)",
             f"4*{n_ub}*max({3 * I + 4 * h}, {V + 2 * h}) + {attn}",
             "llama.cpp src/llama-context.cpp graph_reserve (CUDA0 compute buffer size)"),
    ] + oterms
    extras = {"n_gpu_layers": ngl, "layers_on_gpu": on_gpu, "output_on_gpu": output_on_gpu,
              "n_ctx": n_ctx, "gpu_weights_mib": round(gpu_w_total / MiB, 2),
              "kv_cache_mib": round(kv_gpu / MiB, 2), "compute_buffer_mib": round(compute / MiB, 2),
              "host_weights_bytes": host_w_total, "host_kv_bytes": kv_host,
              "token_embd_on_cpu": True}
    assumptions = {"engine": "llama.cpp", "weights": rw.name, "kv_dtype": kvdt.name,
                   "flash_attn": d.flash_attn, "n_ubatch": d.n_ubatch, "notes": notes}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o), phases=phases,
                    overheads=overheads, terms=tuple(terms), assumptions=assumptions,
                    gpu=gpu_name, gpu_memory_bytes=gpu_bytes, host_bytes=host, extras=extras)


ENGINE_FUNCS = {"hf": hf_estimate, "vllm": vllm_estimate, "llamacpp": llamacpp_estimate}
