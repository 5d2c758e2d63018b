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
from dataclasses import dataclass, fields, replace
from functools import lru_cache, partial
from typing import Any

from .arch import LayerSpec, ModelSpec, rope_scaling
from .dtypes import dtype_bytes
from .errors import MemfitError
from .memory.activations import softcap_config
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
from .memory.overhead import DEFAULT_OVERHEADS, overhead_bytes, overhead_terms
from .memory.weights import (
    ResolvedWeights,
    layer_kind_counts,
    memo,
    model_weights,
    resolve_weights_option,
)
from .parallel import stage_layers
from .solve import largest_true
from .workload import InferenceOptions, vllm_regime

__all__ = ["VLLM_DEFAULTS", "LLAMACPP_DEFAULTS", "hf_estimate", "vllm_estimate",
           "llamacpp_estimate", "ENGINE_FUNCS", "vllm_derived_max_len"]


@dataclass(frozen=True)
class VLLMDefaults:
    """Constants of vLLM's start-up accounting (the engine arguments themselves are options:
    ``max_num_batched_tokens`` and ``max_num_seqs`` default per :func:`_vllm_batch_defaults`)."""

    # vllm/engine/arg_utils.py get_batch_defaults: "device_memory >= 70 * GiB_bytes and
    # 'a100' not in device_name" picks the large-card defaults
    big_card_bytes: int = 70 * 2**30
    # cuBLAS/cuBLASLt workspaces and other non-torch allocations made after the baseline
    # snapshot (memory_profiling's non_torch_increase on one GPU): 0.13 GiB in a public
    # H100 profiling table (gpt-oss, TP=1), ~0.1-0.3 GiB in logs.
    non_torch_bytes: int = 192 * 2**20
    # NCCL's buffers per ring peer, allocated at the first all-reduce of the profile run: the
    # same table shows 0.55 GiB non-torch at TP=2 vs 0.13 at TP=1 (+0.42 GiB for one peer); a
    # ring has at most two distinct peers (NVLS / tree buffers are not modelled).
    nccl_peer_bytes: int = 432 * 2**20
    # fp32 [rows, V] tensors live at once in the sampler (v1/sample/sampler.py: the fp32 copy
    # of the logits, the softmax probabilities, random_sample's exponential q); one public
    # A100 measurement (Qwen2.5-0.5B, 256 rows: torch_peak_increase 0.59 GiB) implies ~3.5
    sampler_rows_copies: int = 3
    # the gathered logits' width: the vocabulary padded to 64 (vocab_parallel_embedding.py
    # DEFAULT_VOCAB_PADDING_SIZE)
    vocab_pad: int = 64
    # vLLM sizes util * cudaMemGetInfo's total, which excludes what the driver reserves:
    # nvidia-smi 81559 MiB vs torch total_memory 81079 MiB on an H100 (validation/gpu).
    driver_reserved_bytes: int = 480 * 2**20
    # CUDA graphs of the decode batch sizes: a measured typical value, not derived from the
    # capture sizes ("Graph capturing finished in N secs, took 0.4-1.0 GiB" in logs; 0.39 GiB
    # gpt-oss-20b and 1.03 GiB gpt-oss-120b in the public H100 table). 0 with enforce_eager.
    # Not derived: vLLM measures it by capturing (v0.21's estimate, vLLM PR 30515: two
    # descriptors per mode into a dummy KV cache, extrapolated) and its "CUDA graph pool
    # memory: A GiB (actual), E GiB (estimated)" lines differ by 0% to +285%; published values
    # run from 0.04 to 8.57 GiB (docs/inference.md lists them and why no rule fits).
    cuda_graph_bytes: int = 512 * 2**20


@dataclass(frozen=True)
class LlamaCppDefaults:
    """llama.cpp constants (``-ub``, ``-fa``, ``-ctk``/``-ctv`` are options)."""

    ctx_pad: int = 256  # n_ctx is padded to a multiple of this (llama_context constructor)


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
    global _LAST_SHAPES
    key = (b, tp, n_layers, softcap)
    last = _LAST_SHAPES
    if last[0] is spec and last[1] == key:
        rest = last[2]
    else:  # Shapes' fields after B and P depend on the model and layout only
        m = spec.mla
        d = m.qk_head_dim if m is not None else spec.head_dim
        d_v = m.v_head_dim if m is not None else spec.head_dim
        rest = (b, spec.hidden_size, -(-spec.vocab_size // tp), spec.num_heads // tp,
                max(1, spec.num_kv_heads // tp), d, d_v, spec.rope_dim,
                -(-spec.intermediate_size // tp), n_layers, softcap[0], softcap[1])
        _LAST_SHAPES = (spec, key, rest)
    return Shapes(B, P, *rest)  # positional: B, P, b, h, V, heads, kv_heads, d, d_v, ...


# the last model's Shapes fields besides B and P (one atomically swapped tuple)
_LAST_SHAPES: tuple[Any, Any, Any] = (None, None, None)


def _moe_width(spec: ModelSpec, tp: int, ep: int) -> tuple[int, int, int]:
    """(top-k, expert width, shared width) on one GPU."""
    if spec.moe is None:
        return 0, 0, 0
    m = spec.moe
    width = m.expert_intermediate_size if ep > 1 else -(-m.expert_intermediate_size // tp)
    return m.top_k, width, -(-m.shared_intermediate_size // tp)


def _stages(spec: ModelSpec, pp: int) -> tuple[tuple[int, int], ...]:
    """Each pipeline stage's layers ``(start, stop)`` (memoised per model)."""
    def build() -> tuple[tuple[int, int], ...]:
        bounds, start = [], 0
        for n in stage_layers(spec.num_layers, pp):
            bounds.append((start, start + n))
            start += n
        return tuple(bounds)
    return memo(spec, ("stages", pp), build)  # type: ignore[no-any-return]


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


def _card(options: InferenceOptions) -> Any:
    """The GPU named by ``--gpu`` (a catalog card or a bare capacity), or None."""
    if options.gpu is None:
        return None
    from .hardware import get_gpu

    return get_gpu(options.gpu)


def _gpu(options: InferenceOptions) -> tuple[str | None, int | None]:
    if options.gpu is None:
        return None, None
    from .hardware import get_gpu

    g = get_gpu(options.gpu)
    return g.name, g.usable_bytes


def _check_context(spec: ModelSpec, options: InferenceOptions) -> list[str]:
    notes: list[str] = []
    T = options.prompt + options.generate
    if spec.learned_positions and T > spec.learned_positions:
        raise MemfitError.bad_value(
            "prompt", options.prompt,
            f"prompt + generate <= {spec.learned_positions} (the model's learned position "
            f"table n_positions; got {T})")
    return notes


def _context_blockers(spec: ModelSpec, o: InferenceOptions) -> list[str]:
    """A context beyond the model's trained limit, said in the verdict (``extras
    ["blockers"]`` makes ``fits`` False): transformers and llama.cpp run it ("n_ctx_per_seq >
    n_ctx_train -- possible training context overflow") but nothing was trained there; vLLM
    rejects the request (its own check in :func:`_vllm_verdict`)."""
    T = o.prompt + o.generate
    limit = spec.max_position_embeddings
    if limit and T > limit and o.engine != "vllm":
        return [f"prompt + generate = {T} tokens is beyond the model's context limit "
                f"{limit} (max_position_embeddings)"]
    return []


# ------------------------------------------------------------------------------------------
# hf: transformers generate()
# ------------------------------------------------------------------------------------------

def _hf_stage(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights, kvdt: KVDtype,
              attn: str, b: int, start: int, stop: int, first: bool,
              last: bool) -> dict[str, Any]:
    """Phases of one GPU (one pipeline stage) under transformers."""
    prof = profile_for(spec)
    tp = o.tp
    B, P, G = o.batch, o.prompt, o.generate
    st = _hf_structure(spec, o, rw, kvdt, start, stop, first, last)
    counts, w = st.counts, st.weights
    W = st.weights_total
    caps = softcap_config(spec)
    s = _shapes(spec, B, P, b, tp, stop - start, caps)
    kv0 = st.cache.bytes(B, P, 0)
    prefill = _hf_prefill(spec, o, st, kvdt, attn, b, s, kv0, start, first, last)
    kv_p, m_p, peak_p = prefill[0]
    moments: dict[str, int] = {}
    for cand in prefill:  # the first largest wins, as max() picks it
        m = cand[1]
        moments[m.name] = m.activations + m.logits
        if cand[2] > peak_p:
            kv_p, m_p, peak_p = cand
    phases = [Phase("load", {"weights": W, "activations": 0}),
              Phase("prefill", {"weights": W, "kv_cache": kv_p, "activations": m_p.activations,
                                "logits": m_p.logits})]
    peak_m = m_p
    kvG = 0
    if G > 0:
        s1 = _shapes(spec, B, 1, b, tp, stop - start, caps)
        kvG = st.cache.bytes(B, P, G)
        cands: list[tuple[int, Moment, int, Any]] = [
            (kvG, m, 0, None) for m in decode_moments(spec, prof, s, T=P + G, last_stage=last)]
        cands += _hf_decode(spec, o, st, kvdt, attn, b, s, s1, first, last)
        best, top = cands[0], -1
        for dc in cands:  # the first largest wins, as max() picks it
            kv_c, m, sh, _ = dc
            v = kv_c + m.activations + sh + m.logits
            moments[m.name] = v - kvG
            if v > top:
                best, top = dc, v
        kv_d, m_d, shift, ctx = best
        phases.append(Phase("decode", {"weights": W, "kv_cache": kv_d,
                                       "activations": m_d.activations + shift,
                                       "logits": m_d.logits}))
        peak_d = W + top  # the decode phase's sum
        if peak_d > peak_p:
            peak_m = m_d if ctx is None else _shifted(m_d, shift, spec, prof, s1, attn, first,
                                                      *ctx)
        peak_p = max(peak_p, peak_d)
    total = max(W, peak_p)  # the largest phase: load (W), prefill or decode

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


def _hf_stage_total(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights, kvdt: KVDtype,
                    attn: str, b: int, start: int, stop: int, first: bool,
                    last: bool) -> dict[str, Any]:
    """:func:`_hf_stage`'s ``total`` alone (the largest phase's sum, from the same candidate
    moments), without its phases, moments table and terms: what a sweep reads."""
    prof = profile_for(spec)
    tp = o.tp
    B, P, G = o.batch, o.prompt, o.generate
    st = _hf_structure(spec, o, rw, kvdt, start, stop, first, last)
    W = st.weights_total
    caps = softcap_config(spec)
    s = _shapes(spec, B, P, b, tp, stop - start, caps)
    kv0 = st.cache.bytes(B, P, 0)
    total = max(W, max(c[2] for c in _hf_prefill(spec, o, st, kvdt, attn, b, s, kv0, start,
                                                    first, last)))
    if G > 0:
        s1 = _shapes(spec, B, 1, b, tp, stop - start, caps)
        kvG = st.cache.bytes(B, P, G)
        top = max(kvG + m.activations + m.logits
                  for m in decode_moments(spec, prof, s, T=P + G, last_stage=last)) \
            if last else -1
        for kv_c, m, sh, _ in _hf_decode(spec, o, st, kvdt, attn, b, s, s1, first, last):
            v = kv_c + m.activations + sh + m.logits
            if v > top:
                top = v
        total = max(total, W + top)
    return {"total": total}


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
        # per kind and split layer: the cache before it (step t) and after it (step t-1)
        edges = [(kind, one, [(before_rows.bytes(B, P, t), after_rows.bytes(B, P, t - 1),
                               inner_layer) for before_rows, after_rows, inner_layer in splits])
                 for kind, one, splits in st.growth]
        # the cache at its largest: one layer's old and new tensors during torch.cat
        kv_t, name, inner = _growth_peak(st, edges, B, P, t)
        base = decode_resident(s, P + t, last)
        with_in, without_in = decode_step_residents(spec, prof, s1, attn, first, P + t)
        res = base + grow + (with_in if inner or not first else without_in)
        cands.append((kv_t, Moment(name, res, formula=_GROWTH_FORMULA,
                                   substituted=partial(_plus_text, kv_t, res)),
                      0, None))
        # each layer kind's attention at its first and last layer: the layers before it
        # hold step t's cache, those after it step t-1's (sliding layers the prefill's
        # P rows until their first decode step)
        for kind, one, split_bytes in edges:
            tokens = tokens_in_layer(kind, P, t)
            own = one.bytes(B, P, t)
            att = decode_attention(spec, prof, s1, attn=attn, layer=kind, tokens=tokens,
                                   first_stage=first, sdpa_math=math, resident=0)
            for before, after, inner_layer in split_bytes:
                kv_a = before + own + after
                lin = inner_layer or not first
                res = base + (with_in if lin else without_in)
                ctx = (kind, tokens, math)
                cands.extend((kv_a, m, res, ctx) for m in att)
                if kind.moe and k:
                    cands.append((kv_a, decode_moe(
                        spec, prof, s1, attn=attn, tokens=tokens, moe_k=k,
                        moe_width=width, shared_width=shared, resident=res), 0, None))
    return cands


def _plus_text(a: int, b: int) -> str:
    return f"{a} + {b}"


_GROWTH_FORMULA = ("cache of every layer + the old K, V of the layer being grown (torch.cat "
                   "keeps both until the assignment) + the step's tensors")


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


def _growth_peak(st: _HFStructure, edges: list[tuple[LayerSpec, HFCacheRows,
                                                    list[tuple[int, int, bool]]]],
                 B: int, P: int, t: int) -> tuple[int, str, bool]:
    """The cache at its largest during decode step ``t``: while layer l grows, the layers
    before it hold ``c_t`` rows and those after it ``c_{t-1}``; layer l holds its old tensors
    and the new ones (a ``DynamicLayer`` frees the old K before concatenating V, so the new K,
    the old V and the new V meet; a sliding layer keeps both old tensors until it reassigns
    them). Checked at the first and the last layer of each kind. Returns the bytes, the
    moment's name and whether the layer is not the stage's first (its input is alive)."""
    best, best_name, best_inner = 0, "", False
    rows = st.rows
    for kind, one, split_bytes in edges:
        k_row, v_row = rows[kind]
        c_new = tokens_in_layer(kind, P, t)
        own_old = one.bytes(B, P, t - 1)
        if kind.attention == "sliding" and kind.window is not None:
            own = own_old + B * c_new * (k_row + v_row)
        else:
            # torch.cat of K (old K, V and the new K), then of V (the old K is gone: the
            # new K, the old V and the new V)
            own = own_old + max(B * c_new * k_row, B * c_new * v_row + B * k_row)
        for before, after, inner in split_bytes:
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


def _hf_best(spec: ModelSpec, o: InferenceOptions,
             stage: Any = None
             ) -> tuple[dict[str, Any], int, ResolvedWeights, KVDtype, str, int, list[str]]:
    """The most loaded stage's phases under transformers and what they were computed with:
    (stage result, stage index, weights, KV dtype, attention, activation bytes, notes).
    ``stage``: the per-stage function (:func:`_hf_stage`, or :func:`_hf_stage_total`)."""
    stage = stage or _hf_stage
    notes = _check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "hf")
    kvdt = resolve_kv_dtype(o.kv_dtype, rw.compute_dtype, "hf")
    b = _act_bytes(rw.compute_dtype)
    prof = profile_for(spec)
    attn = o.attn
    if attn == "sdpa" and softcap_config(spec)[0]:
        attn = "eager"
        notes.append("soft-capped attention: transformers runs it eagerly (SDPA has no "
                     "softcap), as from_pretrained picks")
    elif attn == "sdpa" and prof.sinks:
        attn = "eager"
        notes.append("attention sinks: transformers runs gpt-oss eagerly (its SDPA path "
                     "has no sinks), as from_pretrained picks")
    stages = _stages(spec, o.pp)
    best, best_stage = None, 0
    for i, (start, stop) in enumerate(stages):
        r = stage(spec, o, rw, kvdt, attn, b, start, stop, i == 0, i == len(stages) - 1)
        if best is None or r["total"] > best["total"]:
            best, best_stage = r, i
    assert best is not None
    return best, best_stage, rw, kvdt, attn, b, notes


def hf_verdict(spec: ModelSpec, o: InferenceOptions) -> tuple[int, int, bool | None]:
    """``(peak_bytes, total_bytes, fits)`` of :func:`hf_estimate`, without building the
    Estimate (its phases, terms and tables): what a sweep reads."""
    peak = _hf_best(spec, o, _hf_stage_total)[0]["total"]  # the largest phase's sum
    total = peak + sum(overhead_bytes(peak, world_size=o.tp * o.pp, engine="hf").values())
    gpu_bytes = _gpu(o)[1]
    if gpu_bytes is None:
        return peak, total, None
    return peak, total, (not _context_blockers(spec, o)) and total <= gpu_bytes


def hf_estimate(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    """transformers ``generate()`` (see the module docstring)."""
    best, best_stage, rw, kvdt, attn, b, notes = _hf_best(spec, o)
    world = o.tp * o.pp
    peak = best["total"]
    overheads = overhead_bytes(peak, world_size=world, engine="hf")
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
              "kv_bytes_per_token": best["kv_bytes_per_token"],
              "weights_source": rw.source, "blockers": _context_blockers(spec, o)}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o),
                    phases=tuple(best["phases"]), overheads=overheads,
                    terms=LazyTerms(lambda: (*best["terms"](), *overhead_terms(
                        peak, world_size=world, engine="hf"))),
                    assumptions=assumptions, gpu=gpu_name,
                    gpu_memory_bytes=gpu_bytes, extras=extras)


_OPTION_NAMES = tuple(f.name for f in fields(InferenceOptions))


def _options_dict(o: InferenceOptions) -> dict[str, Any]:
    """The options by field, for an Estimate (which copies it: the result may be the
    instance's own dict, never to be changed). The instance dict holds every field in
    declaration order (the dataclass's ``__init__`` and ``make_options`` set them so); with
    nothing else in it, it is the answer as is."""
    d = o.__dict__
    if len(d) == len(_OPTION_NAMES):
        return d
    return {name: d[name] for name in _OPTION_NAMES}


# ------------------------------------------------------------------------------------------
# vllm
# ------------------------------------------------------------------------------------------

def _vllm_activation_peak(spec: ModelSpec, o: InferenceOptions, b: int, tokens: int,
                          seqs: int, last: bool, d: VLLMDefaults) -> tuple[int, str]:
    """Peak torch memory of vLLM's profile run (``gpu_model_runner.py profile_run``): one
    forward of ``max_num_batched_tokens`` tokens (flash attention: no S x S scores; fused
    ``qkv`` and ``gate_up``), then ``_dummy_sampler_run`` over ``min(max_num_seqs, tokens)``
    rows (``_dummy_run``: ``num_reqs = min(num_tokens, max_num_reqs)``, one logits row each).

    The sampler sees the whole vocabulary on every TP rank: ``LogitsProcessor._gather_logits``
    all-gathers the vocab-parallel shards (``Platform.use_all_gather`` is true under V1), the
    gathered width padded to 64 (``vocab_parallel_embedding.py pad_vocab_size``,
    ``DEFAULT_VOCAB_PADDING_SIZE``), sliced to the real vocabulary; the sampler's fp32 copies
    are ``[rows, V]``. ``profile_run`` frees ``hidden_states`` (``[tokens, h]``) and the
    sampled rows' hidden states only after the sampler ran, so both count beside it."""
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
        rows = min(seqs, M)
        V = spec.vocab_size
        V_pad = -(-V // d.vocab_pad) * d.vocab_pad
        logits = (rows * (V_pad * b + V * 4 * d.sampler_rows_copies)
                  + (M + rows) * h * b)
    if body >= logits:
        return body, "forward of max_num_batched_tokens (flash attention, fused gate_up)"
    return logits, "sampler over max_num_seqs rows (fp32 logits and sampling copies)"


_VLLM_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                  "model_max_length", "max_sequence_length", "max_seq_length", "seq_len")


def vllm_derived_max_len(spec: ModelSpec) -> int:
    """The model's limit as vLLM derives it (``vllm/config/model.py
    _get_and_verify_max_len``): the smallest of the config's length keys (2048 when none),
    times the RoPE scaling factor unless the type is ``su``/``longrope``/``llama3`` (YaRN
    scales ``original_max_position_embeddings``); Gemma 3's limit is already scaled."""
    c = dict(spec.length_keys)
    vals = [c[k] for k in _VLLM_LEN_KEYS if c.get(k, 0) > 0]
    derived = min(vals) if vals else (spec.max_position_embeddings or spec.learned_positions
                                      or 2048)
    rope = rope_scaling(spec)
    if isinstance(rope, Mapping) and "factor" in rope and "gemma3" not in spec.model_type:
        kind = rope.get("rope_type", rope.get("type"))
        if kind not in ("su", "longrope", "llama3"):
            if kind == "yarn" and rope.get("original_max_position_embeddings"):
                derived = int(rope["original_max_position_embeddings"])
            derived = int(derived * float(rope["factor"]))
    return derived


def _vllm_batch_defaults(o: InferenceOptions, card: Any, d: VLLMDefaults) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) as vLLM sets them: ``vllm/engine/arg_utils.py
    EngineArgs.get_batch_defaults`` (pinned by vLLM's ``tests/engine/test_arg_utils.py
    test_defaults_with_usage_context``): cards of >= 70 GiB but the A100 get 8192 tokens
    (``vllm serve``) / 16384 (LLM class) and 1024 sequences; the others 2048 / 8192 and 256.
    Without a GPU: the large-card values."""
    big = card is None or (card.memory_bytes >= d.big_card_bytes
                           and "a100" not in card.name.lower())
    serve = o.vllm_entrypoint == "serve"
    tokens = (8192 if serve else 16384) if big else (2048 if serve else 8192)
    seqs = 1024 if big else 256
    return (o.max_num_batched_tokens or tokens, o.max_num_seqs or seqs)


def _vllm_seq_bytes(spec: ModelSpec, counts: Mapping[LayerSpec, int], kvdt: KVDtype, tp: int,
                    block: int, batched: int) -> Any:
    """``f(length)``: the KV bytes one request of ``length`` tokens needs
    (``vllm/v1/kv_cache_interface.py max_memory_usage_bytes``): ``ceil(length / block)``
    blocks per full layer; a sliding layer ``ceil(min(W - 1 + max_num_batched_tokens,
    length) / block) + 1``."""
    full = 0
    sliding: list[tuple[int, int]] = []  # (n * page, W - 1 + batched)
    for kind, n in counts.items():
        if not n:
            continue
        page = n * block * kv_layout(spec, kind, engine="vllm", tp=tp).token_bytes(kvdt)
        if kind.attention == "sliding" and kind.window:
            sliding.append((page, kind.window - 1 + batched))
        else:
            full += page

    def need(length: int) -> int:
        total = full * -(-length // block)
        for page, cap in sliding:
            total += page * (-(-min(cap, length) // block) + 1)
        return total
    return need


def _vllm_budget(o: InferenceOptions, gpu_bytes: int, world: int, d: VLLMDefaults,
                 ctx: int) -> dict[str, Any]:
    """What vLLM reserves: ``requested = u * total`` of ``cudaMemGetInfo`` (the card less the
    driver's reservation), checked against the free memory at start (``gpu_worker.py
    init_device``: "Free memory on device ... is less than desired GPU memory utilization");
    non-torch memory growing in the profile run (cuBLAS workspaces, NCCL buffers allocated
    at the first collective: ``memory_profiling non_torch_increase``); CUDA graphs inside the
    budget from 0.21 (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` on by default), captured
    after the pool was sized before (``compile_or_warm_up_model``)."""
    total = gpu_bytes - d.driver_reserved_bytes
    requested = int(o.gpu_memory_utilization * total)
    nccl_init = DEFAULT_OVERHEADS.nccl_bytes if world > 1 else 0
    free = total - ctx - nccl_init
    non_torch = d.non_torch_bytes + d.nccl_peer_bytes * min(world - 1, 2)
    graphs = 0 if o.enforce_eager else d.cuda_graph_bytes
    return {"requested": requested, "free_at_start": free, "non_torch": non_torch,
            "graphs": graphs, "graphs_inside": vllm_regime(o.vllm_version) == "0.21" and graphs > 0}


def _vllm_stage(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights, kvdt: KVDtype,
                b: int, start: int, stop: int, first: bool, last: bool, tokens: int,
                seqs: int, budget: dict[str, Any] | None) -> dict[str, Any]:
    """One GPU (pipeline stage): weights, the profile peak and the KV pool left over."""
    w = model_weights(spec, rw, tp=o.tp, ep=o.ep, start=start, stop=stop, first=first,
                      last=last)
    counts = layer_kind_counts(spec, start, stop)
    act, act_what = _vllm_activation_peak(spec, o, b, tokens, seqs, last, VLLM_DEFAULTS)
    token_bytes = _kv_token_bytes(spec, counts, kvdt, o.tp, "vllm")
    block_bytes = o.block_size * token_bytes
    r: dict[str, Any] = {"w": w, "act": act, "act_what": act_what, "counts": counts,
                         "block_bytes": block_bytes, "token_bytes": token_bytes}
    if budget is not None:
        avail = (budget["requested"] - w.total - act - budget["non_torch"]
                 - (budget["graphs"] if budget["graphs_inside"] else 0))
        blocks = max(0, avail // block_bytes) if block_bytes else 0
        r.update(avail=avail, blocks=blocks, pool=blocks * block_bytes)
    return r


def vllm_estimate(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    """vLLM as it starts: weights + the profile run + a KV pool of whole blocks, and vLLM's own
    start checks (see :func:`_vllm_verdict`)."""
    d = VLLM_DEFAULTS
    notes = _check_context(spec, o)
    rw = resolve_weights_option(spec, o.weights, "vllm")
    kvdt = resolve_kv_dtype(o.kv_dtype, rw.compute_dtype, "vllm")
    b = _act_bytes(rw.compute_dtype)
    card = _card(o)
    tokens, seqs = _vllm_batch_defaults(o, card, d)
    world = o.tp * o.pp
    ctx = DEFAULT_OVERHEADS.cuda_context_bytes
    budget = None if card is None else _vllm_budget(o, card.usable_bytes, world, d, ctx)
    stages = _stages(spec, o.pp)
    runs = [_vllm_stage(spec, o, rw, kvdt, b, lo, hi, i == 0, i == len(stages) - 1, tokens,
                        seqs, budget) for i, (lo, hi) in enumerate(stages)]
    # the stage with the smallest pool decides (vLLM takes the minimum over workers)
    key = (lambda r: -r["avail"]) if budget is not None else (lambda r: r["w"].total + r["act"])
    best = max(runs, key=key)
    stage = runs.index(best)
    v = _vllm_verdict(spec, o, kvdt, best, budget, tokens)
    kv = v["needed"] if budget is None else best["pool"]
    phases = (Phase("load", {"weights": best["w"].total}),
              Phase("serve", {"weights": best["w"].total, "kv_cache": kv,
                              "activations": best["act"]}))
    overheads, oterms = _vllm_overheads(best, budget, world, d)
    terms = list(best["w"].terms) + _vllm_terms(o, best, budget, v, d, kv) + oterms
    extras = _vllm_extras(o, best, budget, v, tokens, seqs)
    notes.extend(v["notes"])
    if rw.note:
        notes.append(rw.note)
    regime = vllm_regime(o.vllm_version)
    if regime != o.vllm_version:
        notes.append(f"vLLM {o.vllm_version} modelled with the memory accounting of {regime} ("
                     + ("CUDA graphs inside the KV budget, as from v0.21.0)" if regime == "0.21"
                        else "CUDA graphs captured after the KV pool is sized, as before "
                        "v0.21.0)"))
    assumptions = {"engine": f"vllm {o.vllm_version} (V1, paged KV cache, `vllm "
                             f"{'serve' if o.vllm_entrypoint == 'serve' else 'LLM class'}`)",
                   "vllm_accounting": regime,
                   "weights": rw.name, "weights_source": rw.source, "kv_dtype": kvdt.name,
                   "gpu_memory_utilization": o.gpu_memory_utilization,
                   "most_loaded_stage": stage, "notes": notes}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o), phases=phases,
                    overheads=overheads, terms=tuple(terms), assumptions=assumptions,
                    gpu=card.name if card else None,
                    gpu_memory_bytes=card.usable_bytes if card else None, extras=extras)


def _vllm_verdict(spec: ModelSpec, o: InferenceOptions,
                  kvdt: KVDtype, r: dict[str, Any], budget: dict[str, Any] | None,
                  tokens: int) -> dict[str, Any]:
    """vLLM's start checks and what the scenario gets from the pool.

    * ``max_model_len`` above the derived limit: ``vllm/config/model.py
      _get_and_verify_max_len`` raises (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1);
    * no room for one block: "No available memory for the cache blocks";
    * one request of ``max_model_len`` tokens must fit the pool: ``vllm/v1/core/
      kv_cache_utils.py check_enough_kv_cache_memory`` ("To serve at least one request with
      the models's max seq len ... estimated maximum model length is N"; the older message:
      "The model's max seq len (N) is larger than the maximum number of tokens that can be
      stored in KV cache (M)"), with ``estimate_max_model_len``'s binary search for N.
    """
    T = o.prompt + o.generate
    derived = vllm_derived_max_len(spec)
    max_len = o.max_model_len or derived
    seq = _vllm_seq_bytes(spec, r["counts"], kvdt, o.tp, o.block_size, tokens)
    out: dict[str, Any] = {"derived": derived, "max_len": max_len, "blockers": [],
                           "notes": [], "needed": o.batch * seq(T), "starts": None,
                           "largest_len": None, "warnings": []}
    B = out["blockers"]
    refused = False  # a start check failed (the others refuse a request, not the engine)
    if o.max_model_len and o.max_model_len > derived:
        refused = True
        B.append(f"--max-model-len {o.max_model_len} is above the model's limit {derived}: "
                 "vLLM refuses it (VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 overrides)")
    if T > max_len:  # vLLM starts; the request is refused (fits == starts, issue 15)
        out["warnings"].append(f"prompt + generate = {T} tokens is above max_model_len "
                               f"{max_len}: vLLM rejects the request")
    if budget is None:
        return out
    if budget["free_at_start"] < budget["requested"]:
        refused = True
        B.append(f"free memory at start ({budget['free_at_start'] / 2**30:.2f} GiB) is below "
                 f"gpu_memory_utilization x total ({budget['requested'] / 2**30:.2f} GiB): "
                 "vLLM refuses to start; lower --gpu-memory-utilization")
    avail = r["avail"]
    pool = r["pool"]
    one = seq(max_len)
    largest = (max_len if one <= avail else
               largest_true(lambda x: seq(x) <= avail, 1, max_len) if avail > 0 else None)
    out["largest_len"] = largest
    if r["blocks"] <= 0:
        refused = True
        B.append("no memory left for KV cache blocks after the weights and the profile run: "
                 "vLLM does not start (more GPUs with --tp, a smaller --weights format, or a "
                 "larger GPU)")
    elif one > avail:
        refused = True
        fix = f"--max-model-len {largest} starts" if largest else "no --max-model-len starts"
        B.append(f"max_model_len {max_len} needs {one / 2**30:.2f} GiB of KV cache, more than "
                 f"the {avail / 2**30:.2f} GiB left ({r['blocks'] * o.block_size:,} tokens): "
                 f"vLLM does not start; {fix}, or give it more memory "
                 "(--gpu-memory-utilization, --tp, a larger GPU)")
    out["starts"] = not refused
    per_seq = seq(T)
    out["scenario_concurrency"] = pool // per_seq if per_seq else 0
    out["max_concurrency"] = round(pool / one, 2) if one else 0.0
    if out["starts"] and T <= max_len and out["scenario_concurrency"] < o.batch:
        out["warnings"].append(
            f"the KV pool holds {out['scenario_concurrency']} sequences of {T} tokens at "
            f"once, fewer than the batch of {o.batch} (vLLM queues the rest)")
    return out


def _vllm_overheads(r: dict[str, Any], budget: dict[str, Any] | None, world: int,
                    d: VLLMDefaults) -> tuple[dict[str, int], list[Term]]:
    # The weights and the KV pool are a few exact allocations made once; the caching
    # allocator's slack concerns the transient activations only.
    overheads, oterms = _overheads(r["act"], world, "vllm")
    oterms = [t if t.name != "allocator_slack" else
              Term(t.name, t.bytes, "s * A_profile", t.substituted, t.source,
                   note="vLLM allocates weights and the KV pool once: slack on activations")
              for t in oterms]
    nt = d.non_torch_bytes + d.nccl_peer_bytes * min(world - 1, 2)
    overheads["non_torch"] = nt
    oterms.append(Term("non_torch", nt, "C_nt = C_cublas + C_nccl_peer * min(world - 1, 2)",
                       f"{d.non_torch_bytes} + {d.nccl_peer_bytes} * {min(world - 1, 2)}",
                       "vllm/v1/worker/gpu_worker.py determine_available_memory: "
                       "memory_profiling non_torch_increase (cuBLAS workspaces; NCCL buffers "
                       "of the ring peers, allocated at the first collective)"))
    graphs = 0 if budget is None else budget["graphs"]
    if graphs:
        overheads["cuda_graphs"] = graphs
        where = ("inside the KV budget (0.21+: the profiler reserves it)"
                 if budget and budget["graphs_inside"] else
                 "outside the KV budget (captured after the pool is sized)")
        oterms.append(Term("cuda_graphs", graphs, "C_graphs", str(graphs),
                           "vllm/v1/worker/gpu_worker.py compile_or_warm_up_model "
                           "capture_model; 'Graph capturing finished ... took 0.4-1 GiB'",
                           note=where))
    return overheads, oterms


def _vllm_terms(o: InferenceOptions, r: dict[str, Any], budget: dict[str, Any] | None,
                v: dict[str, Any], d: VLLMDefaults, kv: int) -> list[Term]:
    act = Term("activations", r["act"], "profile run peak", r["act_what"],
               "vllm/v1/worker/gpu_model_runner.py profile_run")
    if budget is None:
        return [Term("kv_cache", kv, "B * blocks(T) * block bytes",
                     f"{o.batch} sequences of {o.prompt + o.generate} tokens",
                     "vllm/v1/kv_cache_interface.py max_memory_usage_bytes (no --gpu: the "
                     "pool is sized by the scenario, not by gpu_memory_utilization)"), act]
    g = budget["graphs"] if budget["graphs_inside"] else 0
    return [Term(
        "kv_cache", kv,
        "blocks = floor((u * (M_gpu - M_drv) - W - A_profile - C_nt - C_graphs_0.21) / "
        "(block * bytes_per_token))",
        f"floor(({budget['requested']} - {r['w'].total} - {r['act']} - {budget['non_torch']}"
        f" - {g}) / {r['block_bytes']}) = {r['blocks']}",
        "vllm/v1/worker/gpu_worker.py determine_available_memory; "
        "vllm/v1/core/kv_cache_utils.py get_num_blocks"), act]


def _vllm_extras(o: InferenceOptions, r: dict[str, Any], budget: dict[str, Any] | None,
                 v: dict[str, Any], tokens: int, seqs: int) -> dict[str, Any]:
    block = o.block_size
    extras: dict[str, Any] = {
        "block_size": block, "kv_block_bytes": r["block_bytes"],
        "kv_bytes_per_token": r["token_bytes"],
        "profile_activation_bytes": r["act"], "profile_peak": r["act_what"],
        "max_num_batched_tokens": tokens, "max_num_seqs": seqs,
        "max_model_len": v["max_len"], "derived_max_model_len": v["derived"],
        "vllm_version": o.vllm_version,
        "non_torch_bytes": VLLM_DEFAULTS.non_torch_bytes + VLLM_DEFAULTS.nccl_peer_bytes
        * min(o.tp * o.pp - 1, 2),
        "cuda_graph_bytes": 0 if budget is None else budget["graphs"],
        "blockers": list(v["blockers"]), "warnings": list(v["warnings"]),
        "serves_request": not v["warnings"],
    }
    if budget is not None:
        extras.update({
            "starts": v["starts"], "requested_bytes": budget["requested"],
            "available_kv_bytes": max(0, r["avail"]),
            "kv_cache_blocks": r["blocks"], "kv_cache_tokens": r["blocks"] * block,
            "max_concurrency": v["max_concurrency"],
            "scenario_concurrency": v["scenario_concurrency"],
            "largest_max_model_len": v["largest_len"],
            "fits_concurrently": v["scenario_concurrency"] >= o.batch,
        })
    return extras


# ------------------------------------------------------------------------------------------
# llama.cpp
# ------------------------------------------------------------------------------------------

def _llamacpp_kv_types(o: InferenceOptions) -> tuple[KVDtype, KVDtype]:
    """(-ctk, -ctv): each defaults to ``--kv-dtype``, else f16 (``common/common.h``)."""
    out = []
    for name, value in (("cache-type-k", o.cache_type_k), ("cache-type-v", o.cache_type_v)):
        try:
            out.append(resolve_kv_dtype(value or o.kv_dtype, "fp16", "llamacpp"))
        except MemfitError as err:
            if value is None:
                raise
            raise MemfitError.bad_value(name, value, str(err.allowed or "")) from None
    return out[0], out[1]


def _llamacpp_kv(spec: ModelSpec, kt: KVDtype, vt: KVDtype, n_ctx: int, start: int,
                 stop: int, n_ub: int, d: LlamaCppDefaults) -> int:
    """KV buffer of layers ``start:stop``: ``n_ctx`` cells of ``n_embd_k_gqa`` K elements
    (type -ctk) and ``n_embd_v_gqa`` V elements (type -ctv) per layer, on the layer's device
    (``src/llama-kv-cache.cpp`` llama_kv_cache constructor); SWA layers keep
    ``W + n_ubatch`` cells, padded."""
    total = 0
    for kind, n in layer_kind_counts(spec, start, stop).items():
        if not n:
            continue
        cells = n_ctx
        if kind.attention == "sliding" and kind.window:
            cells = min(n_ctx, -(-(kind.window + n_ub) // d.ctx_pad) * d.ctx_pad)
        lay = kv_layout(spec, kind, engine="llamacpp")
        total += n * (kt.row_bytes(lay.k_elems) + vt.row_bytes(lay.v_elems)) * cells
    return total


def _llamacpp_compute(spec: ModelSpec, n_ctx: int, n_ub: int, fa: bool,
                      output_on_gpu: bool) -> tuple[int, str, str]:
    """The CUDA compute buffer: one graph of ``n_ub = min(n_ctx, n_ubatch)`` tokens
    (``src/llama-context.cpp graph_reserve``), ggml-alloc reusing freed nodes, so the widest
    moment: the FFN's f32 nodes (gate, up, their product beside the layer input, the attention
    output, its norm and the FFN output: ``4 n_ub (3 I + 4 h)``) or the head's (the logits of
    every row, ``4 n_ub (V + 2 h)``), plus the KQ mask, live through the whole graph (f32
    ``[n_kv, n_ub]``, cast to f16 with flash attention: ``src/llama-graph.cpp
    build_attn_inp_kv``). Without flash attention ``build_attn_mha`` materialises the f32
    scores ``kq = ggml_mul_mat(k, q)``, ``[n_kv, n_ub, n_head]``, softmaxed in place
    (``ggml_soft_max_ext``)."""
    h, V = spec.hidden_size, spec.vocab_size
    I = max(spec.intermediate_size, (spec.moe.expert_intermediate_size * spec.moe.top_k)
            if spec.moe else 0)
    ffn = 4 * n_ub * (3 * I + 4 * h)
    out = 4 * n_ub * (V + 2 * h) if output_on_gpu else 0
    if fa:
        mask = 2 * n_ctx * n_ub
        return (mask + max(ffn, out), "KQ mask 2*n_ctx*n_ub (f16, flash attention) + "
                "max(4*n_ub*(3*I + 4*h), 4*n_ub*(V + 2*h))",
                f"{mask} + max({ffn}, {out})")
    mask = 4 * n_ctx * n_ub
    # the f32 scores beside four f32 [n_ub, h] nodes (the layer input, q, kqv and its
    # merged copy): 560.00 MiB for Llama 3 8B at n_ctx 8192, n_ubatch 512 as published
    scores = 4 * n_ctx * n_ub * spec.num_heads + 4 * 4 * n_ub * h
    return (mask + max(ffn, out, scores), "KQ mask 4*n_ctx*n_ub (f32) + max(FFN, head, "
            "f32 scores 4*n_ctx*n_ub*a + 4 * 4*n_ub*h) (no flash attention)",
            f"{mask} + max({ffn}, {out}, {scores})")


def _tensor_split(text: str | None) -> list[float]:
    """``--tensor-split 3,1``: the share of the offloaded layers each GPU gets."""
    if text is None:
        return [1.0]
    try:
        parts = [float(x) for x in str(text).replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if not parts or len(parts) > 64 or any(not x >= 0 for x in parts) or not sum(parts) > 0:
        raise MemfitError.bad_value("tensor-split", text, "a comma list of 1 to 64 "
                                    "non-negative shares, not all 0 (e.g. 3,1)")
    return parts


def _llamacpp_devices(L: int, start: int, act: int, shares: list[float]) -> list[int]:
    """The GPU of each offloaded layer ``start..L`` (index ``L`` is the output layer):
    ``src/llama-model.cpp load_tensors`` normalises the cumulative ``--tensor-split`` shares
    and puts layer ``il`` on ``upper_bound(splits, (il - i_gpu_start) / act_gpu_layers)``."""
    total, acc, splits = sum(shares), 0.0, []
    for x in shares:
        acc += x
        splits.append(acc / total)
    return [min(bisect.bisect_right(splits, (il - start) / act), len(shares) - 1)
            for il in range(start, L + 1)]


def _llamacpp_layout(spec: ModelSpec, o: InferenceOptions,
                     rw: ResolvedWeights) -> dict[str, Any]:
    """Which weights sit on which GPU: the last ``n_gpu_layers`` layers (``i_gpu_start =
    n_layer - n_gpu_layers``, ``src/llama-model.cpp load_tensors``), split over the GPUs of
    ``--tensor-split`` in contiguous runs (split-mode layer), the output layer past
    ``n_layer`` on the GPU of index ``n_layer``, token_embd always in host RAM;
    ``--n-cpu-moe N`` keeps the expert tensors of layers ``0..N-1`` in host RAM
    (``common/arg.cpp``: tensor buffer override ``blk\\.i\\.ffn_(up|down|gate)_exps`` -> CPU)."""
    L = spec.num_layers
    ngl = L + 1 if o.n_gpu_layers is None else o.n_gpu_layers
    on_gpu = min(ngl, L)
    start = L - on_gpu
    output_on_gpu = ngl > L
    shares = _tensor_split(o.tensor_split)
    if o.split_mode == "none":  # -sm none: every offloaded layer on the main GPU
        shares = [1.0]
    devs = _llamacpp_devices(L, start, max(1, min(ngl, L + 1)), shares)
    cut = min(o.n_cpu_moe, L) if spec.moe is not None else 0
    gpus: list[dict[str, Any]] = []
    for g in range(len(shares)):
        idx = [start + i for i, dev in enumerate(devs[:-1]) if dev == g]
        a, b = (idx[0], idx[-1] + 1) if idx else (L, L)
        out_here = output_on_gpu and devs[-1] == g
        w = model_weights(spec, rw, start=a, stop=b, first=False, last=out_here)
        moved = 0
        if min(cut, b) > a:
            moved = model_weights(spec, rw, start=a, stop=min(cut, b), first=False,
                                  last=False).components.get("experts", 0)
        gpus.append({"gpu": g, "start": a, "stop": b, "output": out_here, "w": w,
                     "weights": w.total - w.components.get("buffers", 0) - moved,
                     "moved": moved})
    cpu_w = model_weights(spec, rw, start=0, stop=start, first=True, last=not output_on_gpu)
    moved = sum(g["moved"] for g in gpus)
    host_total = cpu_w.total - cpu_w.components.get("buffers", 0) + moved
    return {"ngl": ngl, "on_gpu": on_gpu, "start": start, "output_on_gpu": output_on_gpu,
            "gpus": gpus, "host_total": host_total, "experts_on_cpu": moved}


def _llamacpp_context(spec: ModelSpec, o: InferenceOptions, d: LlamaCppDefaults,
                      notes: list[str]) -> tuple[int, int, int, list[str]]:
    """(n_ctx, n_batch, n_ubatch, warnings) as ``llama_context::llama_context``
    (``src/llama-context.cpp``, llama.cpp b7000+) sets them: ``n_ctx = -c`` (0: the model's
    ``n_ctx_train``), ``n_batch = min(n_ctx, -b)``, ``n_ubatch = min(n_batch, -ub)``, then
    ``n_ctx = GGML_PAD(n_ctx, 256)``; the compute graph is reserved for ``min(n_ctx,
    n_ubatch)`` tokens (``sched_reserve``). Without ``--ctx-size`` the window is the request's
    own ``batch x (prompt + generate)`` cells. A request beyond the window is a warning:
    llama.cpp starts (its memory is the window's), but cannot serve it as asked."""
    need = o.batch * (o.prompt + o.generate)
    raw = need if o.ctx_size is None else o.ctx_size
    if raw == 0:  # -c 0: the training context from the GGUF metadata
        raw = spec.max_position_embeddings or 0
        if not raw:
            raise MemfitError.bad_value("ctx-size", 0, "a positive window: the model states "
                                        "no training context (max_position_embeddings)")
        notes.append(f"--ctx-size 0: the model's training context, {raw} cells")
    n_ctx = -(-raw // d.ctx_pad) * d.ctx_pad
    n_batch = min(raw, o.batch_size)
    n_ub = min(n_batch, o.ubatch_size)
    warnings = []
    if o.ctx_size is not None and need > n_ctx:
        warnings.append(f"batch x (prompt + generate) = {need} cells is above the context "
                        f"window n_ctx {n_ctx} (--ctx-size): llama.cpp starts, but llama-server "
                        "refuses a prompt beyond its context and stops generating at its end")
    limit = spec.max_position_embeddings
    if o.ctx_size is not None and limit and raw > limit:
        notes.append(f"n_ctx {raw} > n_ctx_train {limit}: llama.cpp warns \"possible training "
                     "context overflow\" and allocates the window anyway")
    return n_ctx, n_batch, n_ub, warnings


def llamacpp_estimate(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    """llama.cpp (the build of late 2025: ``-fa auto``, ``--n-cpu-moe``) with ``n_gpu_layers``
    offloaded over the GPUs of ``--tensor-split``; the buffers it logs: model buffer, KV
    buffer, compute buffer. The estimate is the most loaded GPU's; ``extras["per_gpu"]``
    lists each."""
    d = LLAMACPP_DEFAULTS
    notes = _check_context(spec, o)
    if o.tp > 1 or o.pp > 1 or o.ep > 1:
        notes.append("llama.cpp splits layers across GPUs (--tensor-split, split-mode layer); "
                     "tp/pp/ep are not its options and are ignored")
    if o.n_cpu_moe and spec.moe is None:
        notes.append("--n-cpu-moe ignored: the model has no MoE experts")
    if o.split_mode == "row":
        raise MemfitError.bad_value(
            "split-mode", "row", "layer or none (row split, each matrix's rows spread over the "
            "GPUs by ggml-cuda's split buffer with the KV cache and compute buffer on the main "
            "GPU, is not modelled yet)")
    if o.split_mode == "none" and o.tensor_split is not None:
        notes.append("--tensor-split ignored: --split-mode none keeps every offloaded layer on "
                     "the main GPU (llama.cpp src/llama.cpp llama_model_load_from_file_impl)")
    rw = resolve_weights_option(spec, o.weights, "llamacpp")
    kt, vt = _llamacpp_kv_types(o)
    fa = o.flash_attn != "off"  # auto: on where the backend supports it (CUDA, Metal)
    blockers = _context_blockers(spec, o)
    if not fa and vt.block > 1:
        blockers.append(f"a quantized V cache (-ctv {vt.name}) needs flash attention: "
                        "llama.cpp refuses to create the context with -fa off")
    lay = _llamacpp_layout(spec, o, rw)
    n_ctx, n_batch, n_ub, warnings = _llamacpp_context(spec, o, d, notes)
    for g in lay["gpus"]:
        g["kv"] = _llamacpp_kv(spec, kt, vt, n_ctx, g["start"], g["stop"], n_ub, d)
        # every GPU with work holds a compute buffer; at -ngl 0 the first one still does
        # (large matmuls are offloaded: op offload)
        busy = g["stop"] > g["start"] or g["output"] or g["gpu"] == 0
        g["compute"], g["formula"], g["subst"] = (
            _llamacpp_compute(spec, n_ctx, n_ub, fa, g["output"]) if busy else (0, "", "0"))
        g["total"] = g["weights"] + g["kv"] + g["compute"]
    top = max(lay["gpus"], key=lambda g: g["total"])
    kv_host = _llamacpp_kv(spec, kt, vt, n_ctx, 0, lay["start"], n_ub, d)
    lay["context"] = {"n_batch": n_batch, "ctx_size": o.ctx_size, "split_mode": o.split_mode,
                      "warnings": warnings, "serves_request": not warnings}
    return _llamacpp_result(spec, o, rw, lay, top, kt, vt, n_ctx, n_ub, fa, kv_host, notes,
                            blockers)


def _llamacpp_result(spec: ModelSpec, o: InferenceOptions, rw: ResolvedWeights,
                     lay: dict[str, Any], top: dict[str, Any], kt: KVDtype, vt: KVDtype,
                     n_ctx: int, n_ub: int, fa: bool, kv_host: int, notes: list[str],
                     blockers: list[str]) -> Estimate:
    W, kv, compute = top["weights"], top["kv"], top["compute"]
    phases = (Phase("load", {"weights": W}),
              Phase("decode", {"weights": W, "kv_cache": kv, "activations": compute}))
    overheads, oterms = _overheads(phases[1].peak_bytes, 1, "llamacpp")
    gpu_name, gpu_bytes = _gpu(o)
    MiB = 2**20
    kv_name = kt.name if kt.name == vt.name else f"K {kt.name}, V {vt.name}"
    n_layers = top["stop"] - top["start"]
    terms = [replace(t, name="model_buffer") if t.name == "weights" else t
             for t in top["w"].terms] + [
        Term("kv_buffer", kv, "n_layers_gpu * n_ctx * [row_k(n_embd_k_gqa) + "
             "row_v(n_embd_v_gqa)]", f"{n_layers} layers * {n_ctx} cells ({kv_name})",
             "llama.cpp src/llama-kv-cache.cpp (one cell per context token per layer)"),
        Term("compute_buffer", compute, top["formula"], top["subst"],
             "llama.cpp src/llama-context.cpp graph_reserve; src/llama-graph.cpp "
             "build_attn_mha / build_attn_inp_kv"),
    ] + oterms
    if lay["experts_on_cpu"]:
        terms.append(Term("experts_on_cpu", lay["experts_on_cpu"], "experts of layers < N",
                          f"--n-cpu-moe {o.n_cpu_moe}", "llama.cpp common/arg.cpp --n-cpu-moe"))
    buffers = {}
    for g in lay["gpus"]:
        for what, key in (("model", "weights"), ("KV", "kv"), ("compute", "compute")):
            buffers[f"CUDA{g['gpu']} {what} buffer"] = g[key]
    buffers.update({"CPU model buffer": lay["host_total"], "CPU KV buffer": kv_host})
    extras = {"n_gpu_layers": lay["ngl"], "layers_on_gpu": lay["on_gpu"],
              "output_on_gpu": lay["output_on_gpu"], "n_ctx": n_ctx, "n_ubatch": n_ub,
              "flash_attn": fa, "n_cpu_moe": o.n_cpu_moe, "most_loaded_gpu": top["gpu"],
              "gpu_weights_mib": round(W / MiB, 2), "kv_cache_mib": round(kv / MiB, 2),
              "compute_buffer_mib": round(compute / MiB, 2),
              "host_weights_bytes": lay["host_total"], "host_kv_bytes": kv_host,
              "experts_on_cpu_bytes": lay["experts_on_cpu"], "token_embd_on_cpu": True,
              "buffers": buffers,
              "per_gpu": [{"gpu": g["gpu"], "layers": [g["start"], g["stop"]],
                           "output_layer": g["output"], "model_buffer_bytes": g["weights"],
                           "kv_buffer_bytes": g["kv"], "compute_buffer_bytes": g["compute"]}
                          for g in lay["gpus"]],
              "blockers": blockers, **lay["context"],
              "component_words": {"weights": "model buffer", "kv_cache": "KV buffer",
                                  "activations": "compute buffer"}}
    if len(lay["gpus"]) > 1:
        notes.append("several GPUs: llama.cpp's pipeline-parallel copies of the split inputs "
                     "(n_copies = 4 at full offload) are small and not counted")
    assumptions = {"engine": "llama.cpp", "weights": rw.name, "weights_source": rw.source,
                   "kv_dtype": kv_name, "flash_attn": ("auto (on)" if o.flash_attn == "auto"
                                                       else o.flash_attn),
                   "n_ubatch": n_ub, "notes": notes}
    return Estimate(mode="infer", model=spec.name, options=_options_dict(o), phases=phases,
                    overheads=overheads, terms=tuple(terms), assumptions=assumptions,
                    gpu=gpu_name, gpu_memory_bytes=gpu_bytes,
                    host_bytes=lay["host_total"] + kv_host, extras=extras)


def _sglang(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    from .engine_sglang import sglang_estimate  # its own module (imports this one)

    return sglang_estimate(spec, o)


def _ollama(spec: ModelSpec, o: InferenceOptions) -> Estimate:
    from .engine_ollama import ollama_estimate  # llama.cpp with Ollama's defaults

    return ollama_estimate(spec, o)


ENGINE_FUNCS = {"hf": hf_estimate, "vllm": vllm_estimate, "llamacpp": llamacpp_estimate,
                "sglang": _sglang, "ollama": _ollama}
