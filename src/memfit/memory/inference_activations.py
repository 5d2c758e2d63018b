"""Transient memory of inference: one layer's working set at the prefill peak, the logits, and
the per-step working set of decoding.

During a forward pass only one layer runs at a time, so the transient peak is *one* layer's
tensors (plus the few that live through the whole forward), never a sum over layers. It is
the largest of a few moments, each a list of live tensors read off the model code (and checked
op by op against :mod:`memfit.trace`). Symbols: ``N = B * P`` prompt tokens, h hidden, q the
query width ``a' * d`` on this GPU, I' the MLP width on this GPU, ``b`` the activation bytes,
``S = B * a' * P * P`` attention-score elements, V the vocabulary (``V' = V / TP``)::

    resident   R  = 8*B*P (input_ids) + 8*P (position_ids) + 2*P*d_rot*b (cos, sin)
                  + N*h*b (inputs_embeds, held by the model's forward) + N*h*b (the layer's input)
                  + masks (eager: B*P*P*b per mask type; SDPA: none, or a P*P bool sliding mask)
    norm       R + 2 * 4*N*h                                 (RMSNorm's fp32 upcast and square)
    attention  R + N*h*b + q_rot + KV repeats + scores:      eager: S*(b + 4 + 4) (the scores,
               their fp32 upcast and fp32 softmax; 2*S*b without the upcast: GPT-2); SDPA's
               fused kernels: the output and a 4-byte log-sum-exp per query and head (+ the
               window mask made additive, B*P*P*b); fp32 with grouped KV heads runs SDPA's
               math kernel on CUDA: K, V repeated, q scaled, a float P*P causal mask and
               2*S*b (scores, masked scores); MLA (d_qk != d_v) a fused kernel: its output
               and that output's contiguous copy
    mlp        R + 2*N*h*b + 3*N*I'*b                        (gated: up, act(gate), their product)
               (+ S*b: eager's probabilities stay referenced by the decoder layer)
    moe        R + 2*N*h*b + s*h*b + 4*s*I_e*b, s = N*k       (grouped_mm: gathered tokens, fused
               gate_up output, act and product); later s*h*(b + b + 2*w) (down output, weighted
               and un-permuted copies in the routing weights' dtype w); routing: the router
               logits, top-k, the sorted ids and permutation, their histc copy, the permuted
               weights (and the inverse permutation)
    logits     8*B*P + N_k*h*b + N_k*V'*b (+ 4*B*V': generate()'s fp32 copy of the last row),
               N_k = B (``--logits last``) or B*P (``all``)

and per decode step ``t`` with ``T = P + t`` cached tokens, on top of 8*B*T (input_ids), 8*B
(the previous next tokens) and 4*B*V' (the previous fp32 row)::

    growth     the old and the new cache tensors of one layer live together during torch.cat,
               beside the step's hidden states and its new q, K, V
    attention  the prefill's attention moment with one query over the layer's T keys (eager
               scores and repeat_kv copies, the math kernel's K, V repeats and scaled K^T, the
               expanded single KV head copied for probs @ v, MLA's re-expanded latent), for
               the first and the last layer of each kind: the layers before it at step t, those
               after it at step t-1 (sliding layers keep the prefill's P rows until step 1)
    moe        3 * (B*k) * I_e * h * b      (batched_mm gathers the selected experts' weights)
    head       B*V'*b (logits) + 2 * 4*B*V' (this and the previous step's fp32 copy)

Sources: ``transformers/models/<type>/modeling_<type>.py``, ``transformers/integrations/
sdpa_attention.py``, ``transformers/integrations/moe.py`` (grouped_mm / batched_mm experts),
``transformers/masking_utils.py`` (which masks are materialised), ``transformers/generation/
utils.py`` (``next_token_logits = outputs.logits[:, -1, :].to(copy=True, dtype=float32)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..arch import LayerSpec, ModelSpec
from .breakdown import Term
from .weights import memo

__all__ = ["Profile", "PROFILES", "profile_for", "Shapes", "Moment", "prefill_moments",
           "decode_moments", "decode_attention", "decode_moe", "logits_moments",
           "decode_resident",
           "decode_step_resident", "decode_step_residents", "decode_growth_bytes"]

_SRC = "transformers/models/{t}/modeling_{t}.py (5.x), checked against memfit.trace"


@dataclass(frozen=True)
class Profile:
    """How one model family's forward pass allocates (read from its modeling file)."""

    norm: str = "rms"  # "rms": x.to(fp32), pow, mean, rsqrt, mul; "layer": native_layer_norm
    mlp: str = "gated"  # "gated" 3 N*I; "gated_fused" (one gate_up matmul) 4; "gelu_new" 4;
    #                     "plain" (up, act) 2
    mlp_hidden: int = 2  # N*h tensors of the layer alive during the MLP (residual, norm out...)
    fused_qkv: bool = False  # one qkv matmul whose output stays alive (views) through attention
    eager_upcast: bool = True  # eager softmax(dtype=float32) then .to(dtype)
    keeps_probs: bool = True  # the decoder layer keeps eager's probabilities until it returns
    masks: str = "one"  # "one"; "both" (full and sliding built always); "if_sliding"
    sliding_mask_always: bool = False  # SDPA builds the sliding mask even for short prompts
    moe: str = "none"  # "mixtral" (fp32 routing weights), "qwen" (shared expert first, weights
    #                    in the hidden dtype), "qwen3" (hidden-dtype weights), "deepseek"
    #                    (shared experts after, fp32 router and weights), "gpt_oss" (biases
    #                    gathered per token, clamped GLU)
    scaled_embed: bool = False  # Gemma: inputs_embeds * sqrt(h) (the scaled copy is kept)
    learned_positions: bool = False
    softcap_default: bool = False  # Gemma 2: attention and final-logit soft-capping
    parallel_residual: bool = False
    post_norm: bool = False  # OLMo 2: norms after attention / MLP, none before
    sinks: bool = False  # gpt-oss: a learned sink logit per head, softmax over P + 1 columns
    norm_out_fp32: bool = False  # gpt-oss: (weight * x) in fp32, then .to(dtype)
    rotary_half: bool = False  # gpt-oss: cos and sin of d_rot / 2 (rotates the two halves)
    rotary_fp32: bool = False  # OLMo 2: cos and sin stay fp32
    rotary_cat: bool = False  # partial rotary joined by torch.cat: q is (B, a, P, d)-contiguous


PROFILES: dict[str, Profile] = {
    "llama": Profile(),
    "mistral": Profile(),
    "mixtral": Profile(moe="mixtral"),
    "qwen2": Profile(masks="if_sliding"),
    "qwen2_moe": Profile(masks="both", sliding_mask_always=True, moe="qwen"),
    "qwen3": Profile(masks="if_sliding"),
    "qwen3_moe": Profile(moe="qwen3"),
    "deepseek_v2": Profile(moe="deepseek"),
    "deepseek_v3": Profile(moe="deepseek"),
    "gemma": Profile(scaled_embed=True),
    "gemma2": Profile(scaled_embed=True, masks="both", softcap_default=True),
    "gemma3_text": Profile(scaled_embed=True, masks="both"),
    "phi3": Profile(mlp="gated_fused", fused_qkv=True, rotary_cat=True),
    "gpt2": Profile(norm="layer", mlp="gelu_new", mlp_hidden=3, fused_qkv=True,
                    eager_upcast=False, learned_positions=True),
    "gpt_neox": Profile(norm="layer", mlp="plain", fused_qkv=True, parallel_residual=True,
                        rotary_cat=True),
    "olmo2": Profile(mlp_hidden=1, post_norm=True, norm_out_fp32=True, rotary_fp32=True),
    "gpt_oss": Profile(masks="both", moe="gpt_oss", sinks=True, eager_upcast=False,
                       norm_out_fp32=True, rotary_half=True),
    "custom": Profile(),
}


def profile_for(spec: ModelSpec) -> Profile:
    """The family's profile; unknown (custom) families get Llama's."""
    return PROFILES.get(spec.model_type, PROFILES["llama"])


@dataclass(slots=True)
class Shapes:
    """Per-GPU widths (elements per token) of one scenario (built per estimate and never
    changed; not frozen, which makes it cheaper to build)."""

    B: int
    P: int
    b: int  # activation bytes (2 for bf16/fp16, 4 for fp32)
    h: int
    V: int  # vocabulary rows on this GPU (V / TP)
    heads: int  # a' = a / TP
    kv_heads: int  # a_kv' (replicated when TP > a_kv)
    d: int  # head dim (q/k); MLA: d_nope + d_rope
    d_v: int
    rope_dim: int
    I: int  # dense MLP width on this GPU
    layers: int  # decoder layers on this GPU
    softcap_attn: bool = False
    softcap_logits: bool = False

    @property
    def N(self) -> int:
        return self.B * self.P


class Moment:
    """What is live at one instant, besides the weights: activations, cache, logits (bytes).

    ``kv_full`` says whether the whole prefill cache of this GPU's layers is live (True after
    the layer's cache update); else the cache less the current layer's. ``substituted`` (the
    formula with numbers) may be given as a function: it is then formatted when first read,
    since only the peak moment's is ever shown. Read-only by convention (a plain class with
    slots: a frozen dataclass costs several times more to build, and an estimate builds
    dozens of moments).
    """

    __slots__ = ("name", "activations", "kv_full", "logits", "formula", "_substituted")

    def __init__(self, name: str, activations: int, kv_full: bool = True, logits: int = 0,
                 formula: str = "", substituted: str | Callable[[], str] = "") -> None:
        self.name = name
        self.activations = activations
        self.kv_full = kv_full
        self.logits = logits
        self.formula = formula
        self._substituted = substituted

    @property
    def substituted(self) -> str:
        text = self._substituted
        if not isinstance(text, str):
            text = self._substituted = text()
        return text

    def __repr__(self) -> str:
        return (f"Moment({self.name!r}, activations={self.activations}, "
                f"kv_full={self.kv_full}, logits={self.logits})")


@dataclass(frozen=True)
class _Consts:
    """What the masks and rotary tables need of a model, computed once per model."""

    kinds: frozenset[str]  # the attention kinds of its layers
    window: int | None  # the smallest sliding window
    mask_types: tuple[str, ...]  # the masks the model builds (by the profile's ``masks``)


# The last model's constants (one atomically swapped tuple: an estimate asks for them a dozen
# times, and a memo lookup costs more than the arithmetic it saves).
_LAST_CONSTS: tuple[Any, str, Any] = (None, "", None)


def _consts(spec: ModelSpec, prof: Profile) -> _Consts:
    global _LAST_CONSTS
    last = _LAST_CONSTS
    if last[0] is spec and last[1] == prof.masks:
        return last[2]  # type: ignore[no-any-return]

    def build() -> _Consts:
        kinds = frozenset(x.attention for x in spec.layers)
        wins = [x.window for x in dict.fromkeys(spec.layers) if x.attention == "sliding"
                and x.window]
        if prof.masks == "both":
            types: tuple[str, ...] = ("full", "sliding")
        elif prof.masks == "if_sliding":
            types = ("full", "sliding") if "sliding" in kinds else ("full",)
        else:
            # Mistral, Mixtral, Phi-3: one mask function, sliding when the config has a window
            types = ("sliding",) if "sliding" in kinds else ("full",)
        return _Consts(kinds, min(wins) if wins else None, types)
    consts: _Consts = memo(spec, ("ia_consts", prof.masks), build)
    _LAST_CONSTS = (spec, prof.masks, consts)
    return consts


def resident_bytes(spec: ModelSpec, prof: Profile, s: Shapes, attn: str,
                   first_stage: bool, kv_len: int | None = None) -> dict[str, int]:
    """Tensors alive through the whole forward of ``s.P`` query tokens attending to ``kv_len``
    keys (default ``s.P``: the prefill; a decode step has one query and the cached keys)."""
    B, P, b, h = s.B, s.P, s.b, s.h
    N = B * P
    kv = P if kv_len is None else kv_len
    c = _consts(spec, prof)
    out = {"input_ids": 8 * B * P, "position_ids": 8 * P}
    if spec.mla is not None:
        out["rotary"] = 8 * P * (spec.mla.qk_rope_head_dim // 2)  # complex64 freqs_cis
    elif s.rope_dim:
        # Gemma 3 computes one cos/sin pair per attention type (local and global rope)
        sets = len(c.kinds) if spec.model_type == "gemma3_text" else 1
        width = s.rope_dim // 2 if prof.rotary_half else s.rope_dim
        out["rotary"] = sets * 2 * P * width * (4 if prof.rotary_fp32 else b)
    out["inputs_embeds"] = N * h * b if first_stage else 0
    if prof.learned_positions and first_stage:
        out["position_embeds"] = P * h * b
    out["layer_input"] = N * h * b if (s.layers > 1 or not first_stage) else 0
    out["masks"] = _mask_bytes(c, prof, s, attn, kv)
    return out


def _resident_parts(spec: ModelSpec, prof: Profile, s: Shapes, attn: str, first_stage: bool,
                    kv: int) -> tuple[int, int, int, int]:
    """:func:`resident_bytes` summed, without building its dict: (the sum, ``input_ids``,
    ``layer_input``, ``masks``), the same integers."""
    B, P, b, h = s.B, s.P, s.b, s.h
    N = B * P
    c = _consts(spec, prof)
    ids = 8 * B * P
    total = ids + 8 * P
    if spec.mla is not None:
        total += 8 * P * (spec.mla.qk_rope_head_dim // 2)
    elif s.rope_dim:
        sets = len(c.kinds) if spec.model_type == "gemma3_text" else 1
        width = s.rope_dim // 2 if prof.rotary_half else s.rope_dim
        total += sets * 2 * P * width * (4 if prof.rotary_fp32 else b)
    if first_stage:
        total += N * h * b
        if prof.learned_positions:
            total += P * h * b
    layer_input = N * h * b if (s.layers > 1 or not first_stage) else 0
    masks = _mask_bytes(c, prof, s, attn, kv)
    return total + layer_input + masks, ids, layer_input, masks


def _sliding_mask(c: _Consts, prof: Profile, kv: int) -> bool:
    """Whether SDPA gets an explicit (boolean) window mask: once the keys reach the window
    (Qwen2-MoE builds it always)."""
    window = c.window
    return prof.sliding_mask_always or (window is not None and kv >= window)


def _mask_bytes(c: _Consts, prof: Profile, s: Shapes, attn: str, kv: int) -> int:
    """The masks the model builds: eager an additive (B, 1, q, kv) mask per mask type; SDPA a
    (1, 1, q, kv) bool window mask (expanded over the batch) and none for causal layers."""
    masks = 0
    window = c.window
    for kind in c.mask_types:
        k = min(kv, window) if (kind == "sliding" and window and s.P == 1) else kv
        if attn == "eager":
            masks += s.B * s.P * k * s.b
        elif kind == "sliding" and _sliding_mask(c, prof, kv):
            masks += s.P * k
    return masks


def _rms(s: Shapes, prof: Profile | None = None) -> int:
    """RMSNorm's transient over the hidden width (see :func:`_rms_width`)."""
    return _rms_width(s.N, s.h, 1, s.b, prof is not None and prof.norm_out_fp32)


def _rms_width(N: int, width: int, groups: int, b: int, out_fp32: bool = False) -> int:
    """RMSNorm's transient over ``N`` tokens of ``width`` (``groups`` norms per token: a
    per-head q/k norm has one per head): ``x.to(float32)`` (no copy in fp32), the variance and
    its rsqrt (4 bytes per group), ``x * rsqrt`` (fp32); then llama's ``weight *
    x.to(dtype)`` (two b-sized tensors beside the fp32 one) or, ``out_fp32`` (OLMo 2, gpt-oss),
    ``(weight * x).to(dtype)``: the fp32 product, then its cast."""
    up = 4 * N * width if b < 4 else 0  # the fp32 copy of the input
    first = up + 4 * N * width + 8 * N * groups
    cast = N * width * b if b < 4 else 0
    if out_fp32:
        second = 8 * N * width + cast + 4 * N * groups
    else:
        second = 4 * N * width + cast + N * width * b + 4 * N * groups
    return max(first, second)


def _eager_score_bytes(prof: Profile, s: Shapes) -> int:
    """Bytes per score element at eager attention's peak: the masked scores, their fp32 copy
    and the fp32 softmax (b + 4 + 4; 8 in fp32, where .to(float32) copies nothing); 2*b for
    GPT-2, whose softmax keeps the input dtype."""
    b = s.b
    if not prof.eager_upcast:
        return 2 * b
    return max(2 * b, b + (4 if b < 4 else 0) + 4)


def prefill_moments(spec: ModelSpec, prof: Profile, s: Shapes, *, attn: str,
                    first_stage: bool = True, layer: LayerSpec | None = None,
                    dequant_bytes: int = 0, moe_k: int = 0, moe_width: int = 0,
                    shared_width: int = 0, sdpa_math: bool = False,
                    kv_len: int | None = None, resident: int | None = None,
                    layer_input: bool = True, attention_only: bool = False) -> list[Moment]:
    """The candidate peaks of the prefill inside the last decoder layer of this GPU.

    ``kv_len`` (default ``s.P``): the keys each query attends to; a decode step is the same
    forward with ``s.P = 1`` query and the cached keys (:func:`decode_attention`), which also
    passes its own ``resident`` bytes. ``layer_input=False``: the layer is the stage's first.
    ``attention_only``: the attention's moments alone (what a decode step asks).
    """
    B, P, b = s.B, s.P, s.b
    kv = P if kv_len is None else kv_len
    if resident is None:
        R, _, inp, masks = _resident_parts(spec, prof, s, attn, first_stage, kv)
        if not layer_input:  # the stage's first layer reads the embeddings themselves
            R -= inp
    else:
        R, masks = resident, _mask_bytes(_consts(spec, prof), prof, s, attn, kv)
    rms = 0 if attention_only else _rms(s, prof)
    S = B * s.heads * P * kv
    X = B * P * s.h * b
    moments: list[Moment] = []

    # 1. the input norm (before the cache update of this layer)
    if prof.norm == "rms" and not prof.post_norm and not attention_only:
        moments.append(Moment("prefill/norm", R + rms, kv_full=False,
                              formula="R + 2*4*N*h", substituted=lambda: f"R {R} + {rms}"))

    # 2. attention (its input is the norm's output; OLMo 2 feeds the residual itself)
    S1 = B * s.heads * P * (kv + 1) if prof.sinks else S  # gpt-oss: one sink column more
    probs = S1 * b if (attn == "eager" and prof.keeps_probs) else 0
    if spec.mla is not None:
        moments.append(_mla_attention(spec, prof, s, attn, R, X, kv, S))
    else:
        moments += _attention(spec, prof, s, attn, layer, R, X, kv, S, S1, masks, sdpa_math,
                              attention_only)
    if attention_only:
        return moments

    # 3. the norm before the MLP
    if prof.norm == "rms":
        moments.append(Moment("prefill/post_attention_norm", R + X + rms + probs,
                              formula="R + N*h*b + 2*4*N*h (+ S*b eager probs)",
                              substituted=lambda: f"R {R} + {X} + {rms} + {probs}"))

    # 3b. OLMo 2 normalises the MLP's output (post-norm) while the residual waits
    if prof.post_norm:
        moments.append(Moment("prefill/post_mlp_norm", R + 2 * X + rms + probs,
                              formula="R + 2*N*h*b + 2*4*N*h (+ S*b eager probs)",
                              substituted=lambda: f"R {R} + {2 * X} + {rms} + {probs}"))

    # 4. the MLP (dense or MoE) of the last layer
    hidden = prof.mlp_hidden * X
    if layer is not None and layer.moe and spec.moe is not None and moe_k > 0:
        moments += _moe_moments(spec, prof, s, R, X, hidden, probs, dequant_bytes, moe_k,
                                moe_width, shared_width)
    else:
        F = B * P * s.I * b
        coeff = {"gated": 3, "gated_fused": 4, "gelu_new": 4, "plain": 2}[prof.mlp]
        mlp = coeff * F
        moments.append(Moment("prefill/mlp", R + hidden + mlp + probs + dequant_bytes,
                              formula=f"R + {prof.mlp_hidden}*N*h*b + {coeff}*N*I'*b"
                                      + (" + S*b (eager probabilities)" if probs else "")
                                      + (" + dequant" if dequant_bytes else ""),
                              substituted=lambda: f"R {R} + {hidden} + {mlp} + {probs}"
                                          + (f" + {dequant_bytes}" if dequant_bytes else "")))
    return moments


def _mla_attention(spec: ModelSpec, prof: Profile, s: Shapes, attn: str, R: int, X: int,
                   kv: int, S: int) -> Moment:
    """MLA's attention (DeepSeek): the latent's projections and the expanded keys and values,
    then eager scores or the fused kernel's output (``R``: the resident bytes; ``X``: one
    ``N x h`` activation; ``S``: the score elements)."""
    assert spec.mla is not None
    mla = spec.mla
    B, P, b = s.B, s.P, s.b
    N, Nk = B * P, B * kv
    d_qk, d_v = mla.qk_head_dim, mla.v_head_dim
    a = s.heads
    live = (X + N * a * d_qk * b  # norm out, q projection (its q_nope view stays)
            + N * (mla.kv_lora_rank + mla.qk_rope_head_dim) * b  # kv_a output (kv_nope view)
            + N * a * mla.qk_rope_head_dim * b  # rotated q_pe
            + N * a * d_qk * b  # query_states = cat(q_nope, q_pe)
            + Nk * a * (mla.qk_nope_head_dim + d_v) * b  # kv_b_proj output (k_nope, v)
            + Nk * a * d_qk * b)  # key_states (new_empty, filled)
    if attn == "eager":
        work = S * _eager_score_bytes(prof, s)
        f = ("R + N*h*b + N*(r_kv + d_rope)*b + N*a'*(3*d_qk + d_rope + d_nope + d_v)*b "
             "+ S*(b+4+4)")
    else:
        # d_qk != d_v: CUDA runs a fused kernel (memory-efficient / cuDNN; the tracer's
        # memfit::fused_attention): no scores, the output (B, a', P, d_v) and an fp32
        # log-sum-exp; transpose(1, 2).contiguous() then copies the output for o_proj
        # while it is still referenced (the copy outweighs the log-sum-exp).
        work = max(2 * N * a * d_v * b, N * a * d_v * b + 4 * B * a * P)
        f = ("R + N*h*b + N*(r_kv + d_rope)*b + N*a'*(3*d_qk + d_rope + d_nope + d_v)*b "
             "+ 2*N*a'*d_v*b (fused kernel output and its contiguous copy)")
    return Moment("prefill/attention", R + live + work, formula=f,
                  substituted=lambda: f"R {R} + {live} + {work}")


def _attention(spec: ModelSpec, prof: Profile, s: Shapes, attn: str, layer: LayerSpec | None,
               R: int, X: int, kv: int, S: int, S1: int, masks: int, sdpa_math: bool,
               attention_only: bool) -> list[Moment]:
    """Multi-head attention's moments (MHA / GQA / MQA): the projections with rotary and q's
    norm (unless ``attention_only``), the kernel's working set, and eager attention's output
    copies (see :func:`prefill_moments` for the arguments)."""
    B, P, b = s.B, s.P, s.b
    N, Nk = B * P, B * kv
    q_w, kv_w = s.heads * s.d, s.kv_heads * s.d
    Xn = 0 if prof.post_norm else X
    qkv = N * (q_w + 2 * kv_w) * b if prof.fused_qkv else 0
    moments = [] if attention_only else _qkv_moments(spec, prof, s, R, Xn, qkv)
    q_live = N * q_w * b
    if attn == "eager":
        repeat, work, f = _eager_work(prof, s, kv, S, S1)
    else:
        repeat, work, f = _sdpa_work(prof, s, layer, kv, S, masks, sdpa_math)
    attn_live = Xn + q_live + qkv + repeat + work
    moments.append(Moment("prefill/attention", R + attn_live, formula=f,
                          substituted=lambda: (f"R {R} + {Xn} + {q_live + qkv} + {repeat} "
                                               f"+ {work}")))
    if attn == "eager":
        # probs @ v's output, then its transpose(1, 2).contiguous() copy for o_proj, while
        # the probabilities and the (repeated) K, V are still referenced (the larger
        # moment for short prompts: P < 2*d)
        # (one query: the transpose keeps the output contiguous, no copy)
        out_live = Xn + q_live + qkv + repeat + S1 * b + (2 if P > 1 else 1) * N * q_w * b
        moments.append(Moment("prefill/attention_out", R + out_live,
                              formula="R + N*h*b + q + KV repeats + S*b + 2*N*q*b (the "
                                      "output and its transposed copy)",
                              substituted=lambda: f"R {R} + {out_live}"))
    if attn == "eager" and s.kv_heads == 1 < s.heads and not prof.sinks:
        # one KV head: repeat_kv is an expanded view, which ``probs @ v`` copies to a'
        # heads (matmul folds the batch dims): the probabilities, the copy and the output
        # (the larger moment for few queries: a decode step)
        v_live = Xn + q_live + qkv + S * b + Nk * q_w * b + N * q_w * b
        moments.append(Moment("prefill/attention_v", R + v_live,
                              formula="R + N*h*b + q + S*b + B*kv*a'*d*b + N*q*b (probs @ "
                                      "the single KV head expanded)",
                              substituted=lambda: f"R {R} + {v_live}"))
    return moments


def _qkv_moments(spec: ModelSpec, prof: Profile, s: Shapes, R: int, Xn: int,
                 qkv: int) -> list[Moment]:
    """The projections and rotary, and q's own norm (Qwen 3, Gemma 3, OLMo 2)."""
    b, N = s.b, s.B * s.P
    q_w, kv_w = s.heads * s.d, s.kv_heads * s.d
    # projections and rotary: q_proj out, q*cos, rotate_half(q)*sin, q_embed; k and v outs
    rot = (4 * N * q_w + 2 * N * kv_w) * b if s.rope_dim else (N * q_w * b)
    if prof.fused_qkv:
        rot = qkv + (3 * N * q_w * b if s.rope_dim else 0)
    out = [Moment("prefill/qkv", R + Xn + rot, kv_full=False,
                  formula="R + N*h*b + (4*q + 2*kv)*N*b",
                  substituted=lambda: f"R {R} + {Xn} + {rot}")]
    if spec.qk_norm in ("head", "full"):
        # q_norm(q_proj(x)): the projection beside the norm's fp32 working set (per head
        # for Qwen 3 / Gemma 3, over the whole q width for OLMo 2)
        groups = s.heads if spec.qk_norm == "head" else 1
        qn = N * q_w * b + _rms_width(N, q_w, groups, b, prof.norm_out_fp32)
        out.append(Moment("prefill/q_norm", R + Xn + qn, kv_full=False,
                          formula="R + N*h*b + N*q*b + RMSNorm(q) working set",
                          substituted=lambda: f"R {R} + {Xn} + {qn}"))
    return out


def _eager_work(prof: Profile, s: Shapes, kv: int, S: int, S1: int) -> tuple[int, int, str]:
    """Eager attention: (K, V repeats, the scores' working set, its formula)."""
    B, P, b = s.B, s.P, s.b
    repeat = 0
    if 1 < s.kv_heads < s.heads:
        # repeat_kv: K and V expanded to a' heads (a view for a single KV head)
        repeat = 2 * B * kv * s.heads * s.d * b
    if prof.sinks:
        # masked scores, cat(scores, sinks), its row max and the max-subtracted copy
        # (softmax in b)
        work = S * b + 2 * S1 * b + B * s.heads * P * b
        return repeat, work, ("R + N*h*b + q + 2*N*q*b (repeat_kv) + S*b + 2*B*a'*P*(P+1)*b "
                              "+ B*a'*P*b (sinks)")
    return (repeat, S * _eager_score_bytes(prof, s),
            "R + N*h*b + q + 2*N*q*b (repeat_kv) + S*(b + 4 + 4)")


def _sdpa_work(prof: Profile, s: Shapes, layer: LayerSpec | None, kv: int, S: int, masks: int,
               sdpa_math: bool) -> tuple[int, int, str]:
    """SDPA: (K, V repeats, the kernel's working set, its formula): the math kernel, or a
    fused kernel's output and log-sum-exp (and a window mask made additive)."""
    B, P, b = s.B, s.P, s.b
    N, Nk, q_w = B * P, B * kv, s.heads * s.d
    repeat = 0
    mask_present = masks > 0 and layer is not None and layer.attention == "sliding"
    if sdpa_math and not mask_present and s.kv_heads < s.heads:
        # fp32 with grouped KV heads (enable_gqa, no mask): CUDA has no fused kernel
        # and runs the math one: K and V repeated to a' heads, q * sqrt(scale), the
        # causal mask as a float P x P, then the scores and the masked scores
        # (``attn.add(mask)``, out of place under the tracer's dispatch mode); a
        # decode step (one query, not causal) has no mask: its peak is the scores
        # beside the scaled K^T they are computed from
        repeat = 2 * Nk * q_w * b
        # at q @ K^T: the scaled K^T, and (B > 1, P > 1) q's copy that folds the batch
        # and head dims of its (B, P, a', d)-major layout for bmm
        fold = B > 1 and P > 1 and not prof.rotary_cat
        at_bmm = S * b + Nk * q_w * b + (N * q_w * b if fold else 0)
        scores = max(2 * S * b, at_bmm) if P > 1 else at_bmm
        work = N * q_w * b + (P * kv * b if P > 1 else 0) + scores
        return repeat, work, ("R + N*h*b + q + 2*N*q*b (K, V repeated) + N*q*b (scaled q) + "
                              "P*P*b (float causal mask) + 2*S*b (scores, masked scores): SDPA "
                              "math kernel")
    if 1 < s.kv_heads < s.heads and mask_present and P > 1:
        # a mask disables SDPA's enable_gqa: repeat_kv (one query: pack_gqa
        # folds the query heads instead)
        repeat = 2 * Nk * q_w * b
    lse = 4 * B * s.heads * P
    work = N * q_w * b + lse  # output + log-sum-exp
    if prof.parallel_residual:
        # GPT-NeoX: transpose(1, 2).contiguous() copies the output (the
        # log-sum-exp is gone by then)
        work = 2 * N * q_w * b + max(0, lse - N * q_w * b)
    f = "R + N*h*b + q + N*q*b + 4*B*a'*P (SDPA output, log-sum-exp)"
    if mask_present:
        # SDPA turns the boolean window mask into an additive one in q's dtype
        # (convert_boolean_attn_mask), full size over the batch
        work += B * P * kv * b
        f += " + B*P*P*b (the window mask made additive)"
    return repeat, work, f


def _moe_moments(spec: ModelSpec, prof: Profile, s: Shapes, R: int, X: int, hidden: int,
                 probs: int, dequant_bytes: int, moe_k: int, moe_width: int,
                 shared_width: int) -> list[Moment]:
    """A MoE block's moments: the experts' up and down projections beside the routing
    tensors, and the shared expert (see the module docstring)."""
    assert spec.moe is not None
    B, P, b, h = s.B, s.P, s.b, s.h
    N = B * P
    E = spec.moe.num_experts
    sN = N * moe_k  # token-expert pairs
    ie = moe_width
    w = 4 if prof.moe in ("mixtral", "deepseek") else b  # routing weights' dtype
    rb = 4 if prof.moe == "deepseek" else b  # router logits (DeepSeek: fp32 router)
    # router logits (kept by ``_, weights, index = self.gate(x)``), top-k weights and
    # indices; grouped_mm's sort of the expert ids (sorted ids and permutation, int64),
    # histc's 4-byte copy of the ids, the permuted routing weights, the per-expert counts
    # and offsets; the inverse permutation joins them at the down projection
    routing = (N * E * rb + N * moe_k * (w + 8) + 2 * 8 * sN + 4 * sN + sN * w + 8 * E)
    shared_first = X if prof.moe == "qwen" and shared_width else 0
    if prof.moe == "gpt_oss":
        # gathered tokens, gate_up output and its gathered bias, then the clamped GLU's
        # five s x I_e temporaries (clamp, clamp, gate*alpha, up + 1, product)
        up = sN * h * b + 2 * sN * 2 * ie * b + 5 * sN * ie * b
        down = sN * h * b + 2 * sN * h * b + sN * 2 * ie * b + sN * ie * b
        f_up = "R + 2*N*h*b + s*h*b + 2*s*2*I_e*b + 5*s*I_e*b, s = N*k"
    else:
        up = sN * h * b + sN * 2 * ie * b + 2 * sN * ie * b
        down = sN * h * b + sN * h * b + 2 * sN * h * w
        f_up = "R + 2*N*h*b + s*h*b + s*2*I_e*b + 2*s*I_e*b, s = N*k"
    base = R + hidden + shared_first + routing + probs
    down += 8 * sN  # inv_perm
    out = [Moment("prefill/moe_up", base + up + dequant_bytes,
                  formula=f_up + " (+ routing tensors)",
                  substituted=lambda: f"R {R} + {hidden + shared_first} + {routing} + {up}"),
           Moment("prefill/moe_down", base + down,
                  formula="R + 2*N*h*b + 2*s*h*b + 2*s*h*w (weighted, unpermuted)",
                  substituted=lambda: f"R {R} + {hidden + shared_first} + {routing} + {down}")]
    if shared_width:
        sh = 3 * N * shared_width * b
        extra = X if prof.moe == "deepseek" else 0  # routed output kept for the sum
        out.append(Moment("prefill/shared_expert", R + hidden + extra + sh + probs,
                          formula="R + 2*N*h*b + 3*N*I_s*b",
                          substituted=lambda: f"R {R} + {hidden + extra} + {sh}"))
    return out


def logits_moments(spec: ModelSpec, s: Shapes, *, logits: str, last_stage: bool = True,
                   engine: str = "hf") -> list[Moment]:
    """The end of the prefill: the LM head's output and generate()'s fp32 copy of its last row."""
    if not last_stage:
        return []
    B, P, b, h, V = s.B, s.P, s.b, s.h, s.V
    prof = profile_for(spec)
    rows = B if logits == "last" else B * P
    lg = rows * V * b
    ids = 8 * B * P
    X = B * P * h * b
    extra = lg if s.softcap_logits else 0  # x / cap, tanh, * cap: two logits-sized at once
    fp32_row = 4 * B * V
    rms = _rms(s, prof)
    return [
        Moment("prefill/final_norm", ids + X + rms, kv_full=True,
               formula="8*B*P + N*h*b + 2*4*N*h", substituted=lambda: f"{ids} + {X} + {rms}"),
        Moment("prefill/logits", ids + X + extra, logits=lg,
               formula=f"8*B*P + N*h*b + {'B' if logits == 'last' else 'B*P'}*V'*b"
                       + (" (x2: soft-capping)" if extra else ""),
               substituted=lambda: f"{ids} + {X} + {lg}" + (f" + {extra}" if extra else "")),
        Moment("prefill/next_token", ids + fp32_row, logits=lg,
               formula="8*B*P + logits + 4*B*V' (fp32 copy of the last row)",
               substituted=lambda: f"{ids} + {lg} + {fp32_row}"),
    ]


def decode_attention(spec: ModelSpec, prof: Profile, s1: Shapes, *, attn: str,
                     layer: LayerSpec | None, tokens: int, first_stage: bool = True,
                     sdpa_math: bool = False, resident: int = 0) -> list[Moment]:
    """A decode step's attention inside one layer: :func:`prefill_moments`' attention with
    one query token (``s1``: ``P = 1``) over the layer's ``tokens`` cached keys, on top of
    ``resident`` (:func:`decode_resident` + :func:`decode_step_resident`)."""
    out = []
    for m in prefill_moments(spec, prof, s1, attn=attn, first_stage=first_stage, layer=layer,
                             sdpa_math=sdpa_math, kv_len=tokens, resident=resident,
                             attention_only=True):
        name = _DECODE_NAMES.get(m.name)
        if name is not None:
            formula = _DECODE_FORMULAS.get(m.formula)
            if formula is None:  # a handful of texts: made once each
                formula = _DECODE_FORMULAS[m.formula] = (
                    "decode_resident + the step's forward (one query, T cached keys): "
                    + m.formula)
            out.append(Moment(name, m.activations, formula=formula,
                              substituted=m._substituted))
    return out


# the prefill attention moments a decode step keeps, by their decode names
_DECODE_NAMES = {n: n.replace("prefill", "decode") for n in (
    "prefill/attention", "prefill/attention_v", "prefill/attention_out")}
_DECODE_FORMULAS: dict[str, str] = {}  # prefill formula -> decode formula (a few texts)


def decode_moments(spec: ModelSpec, prof: Profile, s: Shapes, *, T: int,
                   last_stage: bool = True) -> list[Moment]:
    """The end of the last decode step (``T`` cached tokens after it), with the whole cache
    grown: the logits beside this and the previous step's fp32 row. Each layer's attention
    (:func:`decode_attention`), MoE block (:func:`decode_moe`) and the cache's own growth are
    candidates of their own (``engines``: with the cache as it is inside that layer)."""
    B, b, V = s.B, s.b, s.V
    small = decode_resident(s, T, last_stage)
    out: list[Moment] = []
    if last_stage:
        lg = B * V * b
        extra = lg if s.softcap_logits else 0
        out.append(Moment("decode/logits", small + extra + 4 * B * V, logits=lg,
                          formula="B*V'*b + 2*4*B*V' (this and the previous fp32 row)",
                          substituted=lambda: f"{lg} + {extra} + {4 * B * V} + {small}"))
    return out


def decode_moe(spec: ModelSpec, prof: Profile, s1: Shapes, *, attn: str, tokens: int,
               moe_k: int, moe_width: int, shared_width: int = 0,
               resident: int = 0) -> Moment:
    """A decode step's MoE block: transformers' ``batched_mm`` experts gather each selected
    expert's weights per token (``coeff * (B*k) * I_e * h * b``), beside the step's hidden
    states, the routing tensors and the experts' activations (``s1``: one query token;
    ``tokens``: the layer's cached keys, for eager attention's kept probabilities)."""
    assert spec.moe is not None
    B, b, h = s1.B, s1.b, s1.h
    sel = B * moe_k  # token-expert pairs
    coeff = 3 if spec.mlp_gated else 2
    g = coeff * sel * moe_width * h * b
    w = 4 if prof.moe in ("mixtral", "deepseek") else b  # routing weights' dtype
    rb = 4 if prof.moe == "deepseek" else b  # router logits
    routing = B * spec.moe.num_experts * rb + sel * (w + 8)
    X = B * h * b
    hidden = prof.mlp_hidden * X + (X if prof.moe == "qwen" and shared_width else 0)
    working = sel * h * b + sel * moe_width * b  # gathered tokens, the act * up product
    if prof.moe == "gpt_oss":
        working += sel * 2 * moe_width * b  # gate_up's bias gathered per token
    # eager attention's probabilities stay referenced by the decoder layer
    probs = (B * s1.heads * (tokens + (1 if prof.sinks else 0)) * b
             if attn == "eager" and prof.keeps_probs else 0)
    act = hidden + routing + working + probs
    return Moment("decode/moe_gather", resident + act + g,
                  formula=f"{coeff}*(B*k)*I_e*h*b (batched_mm gathers expert weights) "
                          "+ the step's hidden states, routing and expert activations",
                  substituted=lambda: f"{resident} + {act} + {g}")


def decode_resident(s: Shapes, T: int, last_stage: bool) -> int:
    """What a decode step keeps besides weights and cache: ``input_ids`` (8*B*T), the previous
    step's next tokens (8*B, this step's input) and its fp32 copy of the last logits row
    (4*B*V')."""
    return 8 * s.B * T + 8 * s.B + (4 * s.B * s.V if last_stage else 0)


def decode_step_resident(spec: ModelSpec, prof: Profile, s1: Shapes, attn: str,
                         first_stage: bool, kv_len: int, layer_input: bool = True) -> int:
    """The tensors a decode step's forward holds through a layer (``s1``: the shapes with one
    query token): position id, cos/sin, ``inputs_embeds``, the layer's input (not for the
    stage's first layer: ``layer_input=False``) and the masks over ``kv_len`` keys; the
    step's input ids are the previous step's next tokens (in :func:`decode_resident`)."""
    total, ids, inp, _ = _resident_parts(spec, prof, s1, attn, first_stage, kv_len)
    return total - ids - (0 if layer_input else inp)


def decode_step_residents(spec: ModelSpec, prof: Profile, s1: Shapes, attn: str,
                          first_stage: bool, kv_len: int) -> tuple[int, int]:
    """:func:`decode_step_resident` with the layer's input and without it (the stage's first
    layer), from one evaluation of the resident tensors."""
    total, ids, inp, _ = _resident_parts(spec, prof, s1, attn, first_stage, kv_len)
    with_input = total - ids
    return with_input, with_input - inp


def decode_growth_bytes(spec: ModelSpec, prof: Profile, s1: Shapes) -> int:
    """The step's attention tensors alive while a layer's cache grows (``cache.update``
    holds its new K and V): the norm's output, q, and the new K and V (rotated k, v; the
    fused q/k/v output and its rotated q, k; MLA: q, q_pe, the normed latent and k_pe)."""
    B, b, h = s1.B, s1.b, s1.h
    Xn = 0 if prof.post_norm else B * h * b
    q_w, kv_w = s1.heads * s1.d, s1.kv_heads * s1.d
    if spec.mla is not None:
        m = spec.mla
        return (Xn + B * s1.heads * (m.qk_head_dim + m.qk_rope_head_dim) * b
                + B * (m.kv_lora_rank + m.qk_rope_head_dim) * b)
    if prof.fused_qkv:
        return Xn + B * (q_w + 2 * kv_w) * b + (B * (q_w + kv_w) * b if s1.rope_dim else 0)
    return Xn + B * (q_w + 2 * kv_w) * b


def moment_term(m: Moment, family: str, total: int) -> Term:
    """A :class:`Term` for one moment (its activations + logits)."""
    return Term(m.name.replace("/", "_"), total, m.formula, m.substituted,
                _SRC.format(t=family))
