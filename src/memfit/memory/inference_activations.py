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
               fused kernels: the output and a 4-byte log-sum-exp per query and head
    mlp        R + 2*N*h*b + 3*N*I'*b                        (gated: up, act(gate), their product)
               (+ S*b: eager's probabilities stay referenced by the decoder layer)
    moe        R + 2*N*h*b + s*h*b + 4*s*I_e*b, s = N*k       (grouped_mm: gathered tokens, fused
               gate_up output, act and product); later s*h*(b + b + 2*w) (down output, weighted
               and un-permuted copies in the routing weights' dtype w)
    logits     8*B*P + N_k*h*b + N_k*V'*b (+ 4*B*V': generate()'s fp32 copy of the last row),
               N_k = B (``--logits last``) or B*P (``all``)

and per decode step ``t`` with ``T = P + t`` cached tokens::

    growth     the old and the new cache tensor of one layer live together during torch.cat
    head       B*V'*b (logits) + 2 * 4*B*V' (this and the previous step's fp32 copy)
    moe        3 * (B*k) * I_e * h * b      (batched_mm gathers the selected experts' weights)
    eager      2 * B*a'*T*d*b               (repeat_kv copies of K and V for GQA)

Sources: ``transformers/models/<type>/modeling_<type>.py``, ``transformers/integrations/
sdpa_attention.py``, ``transformers/integrations/moe.py`` (grouped_mm / batched_mm experts),
``transformers/masking_utils.py`` (which masks are materialised), ``transformers/generation/
utils.py`` (``next_token_logits = outputs.logits[:, -1, :].to(copy=True, dtype=float32)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..arch import LayerSpec, ModelSpec
from .breakdown import Term

__all__ = ["Profile", "PROFILES", "profile_for", "Shapes", "Moment", "prefill_moments",
           "decode_moments", "logits_moments", "decode_resident"]

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
    "phi3": Profile(mlp="gated_fused", fused_qkv=True),
    "gpt2": Profile(norm="layer", mlp="gelu_new", mlp_hidden=3, fused_qkv=True,
                    eager_upcast=False, learned_positions=True),
    "gpt_neox": Profile(norm="layer", mlp="plain", fused_qkv=True, parallel_residual=True),
    "olmo2": Profile(mlp_hidden=1, post_norm=True),
    "gpt_oss": Profile(masks="both", moe="gpt_oss", sinks=True, eager_upcast=False,
                       norm_out_fp32=True),
    "custom": Profile(),
}


def profile_for(spec: ModelSpec) -> Profile:
    """The family's profile; unknown (custom) families get Llama's."""
    return PROFILES.get(spec.model_type, PROFILES["llama"])


@dataclass(frozen=True)
class Shapes:
    """Per-GPU widths (elements per token) of one scenario."""

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


@dataclass(frozen=True)
class Moment:
    """What is live at one instant, besides the weights: activations, cache, logits (bytes).

    ``kv_full`` says whether the whole prefill cache of this GPU's layers is live (True after
    the layer's cache update); else the cache less the current layer's.
    """

    name: str
    activations: int
    kv_full: bool = True
    logits: int = 0
    formula: str = ""
    substituted: str = ""
    parts: Mapping[str, int] = field(default_factory=dict)


def _attention_kinds(spec: ModelSpec) -> frozenset[str]:
    from .weights import memo

    return memo(spec, "attention_kinds", lambda: frozenset(x.attention for x in spec.layers))


def _mask_types(spec: ModelSpec, prof: Profile) -> list[str]:
    kinds = _attention_kinds(spec)
    if prof.masks == "both":
        return ["full", "sliding"]
    if prof.masks == "if_sliding":
        return ["full", "sliding"] if "sliding" in kinds else ["full"]
    # Mistral, Mixtral, Phi-3: one mask function, sliding when the config has a window
    return ["sliding"] if "sliding" in kinds else ["full"]


def _window(spec: ModelSpec) -> int | None:
    from .weights import memo

    def build() -> int | None:
        wins = [x.window for x in dict.fromkeys(spec.layers) if x.attention == "sliding"
                and x.window]
        return min(wins) if wins else None
    return memo(spec, "min_window", build)


def resident_bytes(spec: ModelSpec, prof: Profile, s: Shapes, attn: str,
                   first_stage: bool) -> dict[str, int]:
    """Tensors alive through the whole forward of the prefill (see the module docstring)."""
    B, P, b, N, h = s.B, s.P, s.b, s.N, s.h
    out = {"input_ids": 8 * B * P, "position_ids": 8 * P}
    if spec.mla is not None:
        out["rotary"] = 8 * P * (spec.mla.qk_rope_head_dim // 2)  # complex64 freqs_cis
    elif s.rope_dim:
        out["rotary"] = 2 * P * s.rope_dim * b
    out["inputs_embeds"] = N * h * b if first_stage else 0
    if prof.learned_positions and first_stage:
        out["position_embeds"] = P * h * b
    out["layer_input"] = N * h * b if (s.layers > 1 or not first_stage) else 0
    masks = 0
    window = _window(spec)
    for kind in _mask_types(spec, prof):
        if attn == "eager":
            masks += B * P * P * b
        elif kind == "sliding" and (prof.sliding_mask_always or (window is not None
                                                                  and P >= window)):
            masks += P * P  # bool (1, 1, P, P), expanded over the batch
    out["masks"] = masks
    return out


def _rms(s: Shapes, prof: Profile | None = None) -> int:
    """RMSNorm's transient: x.to(float32) and its square (or x * rsqrt), 4 bytes each (gpt-oss
    also holds the fp32 product with its weight while casting it back)."""
    extra = s.N * s.h * s.b if prof is not None and prof.norm_out_fp32 else 0
    return 2 * 4 * s.N * s.h + extra


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
                    shared_width: int = 0, sdpa_math: bool = False) -> list[Moment]:
    """The candidate peaks of the prefill inside the last decoder layer of this GPU."""
    B, P, b, N, h = s.B, s.P, s.b, s.N, s.h
    res = resident_bytes(spec, prof, s, attn, first_stage)
    R = sum(res.values())
    q_w = s.heads * s.d
    kv_w = s.kv_heads * s.d
    S = B * s.heads * P * P
    X = N * h * b
    moments: list[Moment] = []
    res_txt = f"R {R}"

    # 1. the input norm (before the cache update of this layer)
    if prof.norm == "rms" and not prof.post_norm:
        moments.append(Moment("prefill/norm", R + _rms(s, prof), kv_full=False,
                              formula="R + 2*4*N*h", substituted=f"{res_txt} + {_rms(s, prof)}"))

    # 2. attention (its input is the norm's output; OLMo 2 feeds the residual itself)
    Xn = 0 if prof.post_norm else X
    mla = spec.mla
    S1 = B * s.heads * P * (P + 1) if prof.sinks else S  # gpt-oss: one sink column more
    probs = S1 * b if (attn == "eager" and prof.keeps_probs) else 0
    if mla is not None:
        d_qk, d_v = mla.qk_head_dim, mla.v_head_dim
        a = s.heads
        live = (X + N * a * d_qk * b  # norm out, q projection (its q_nope view stays)
                + N * a * mla.qk_rope_head_dim * b  # rotated q_pe
                + N * a * d_qk * b  # query_states = cat(q_nope, q_pe)
                + N * a * (mla.qk_nope_head_dim + d_v) * b  # kv_b_proj output (k_nope, v views)
                + N * a * d_qk * b)  # key_states (new_empty, filled)
        if attn == "eager":
            work = S * _eager_score_bytes(prof, s)
            f = "R + N*h*b + N*a'*(3*d_qk + d_rope + d_nope + d_v)*b + S*(b+4+4)"
        else:
            # PyTorch's SDPA has no fused CPU kernel for d_qk != d_v: the math path upcasts
            # q, k, v to fp32, scales q, and materialises the fp32 scores and softmax.
            work = (N * a * (3 * d_qk + d_v) * 4 + 2 * S * 4 + 4 * P * P if sdpa_math
                    else N * a * d_v * b)
            f = ("R + N*h*b + N*a'*(3*d_qk + d_rope + d_nope + d_v)*b + N*a'*(3*d_qk + d_v)*4 "
                 "+ 2*S*4 + 4*P*P (SDPA math path: fp32 copies, scores, softmax, float mask)"
                 if sdpa_math else "R + N*h*b + N*a'*(...)*b + N*a'*d_v*b (fused kernel)")
        moments.append(Moment("prefill/attention", R + live + work, formula=f,
                              substituted=f"{res_txt} + {live} + {work}"))
    else:
        qkv = N * (q_w + 2 * kv_w) * b if prof.fused_qkv else 0
        # projections and rotary: q_proj out, q*cos, rotate_half(q)*sin, q_embed; k and v outs
        rot = (4 * N * q_w + 2 * N * kv_w) * b if s.rope_dim else (N * q_w * b)
        if prof.fused_qkv:
            rot = qkv + (3 * N * q_w * b if s.rope_dim else 0)
        moments.append(Moment("prefill/qkv", R + Xn + rot, kv_full=False,
                              formula="R + N*h*b + (4*q + 2*kv)*N*b",
                              substituted=f"{res_txt} + {Xn} + {rot}"))
        q_live = N * q_w * b
        repeat = 0
        if attn == "eager":
            if 1 < s.kv_heads < s.heads:
                # repeat_kv: K and V expanded to a' heads (a view for a single KV head)
                repeat = 2 * N * q_w * b
            if prof.sinks:
                # masked scores, cat(scores, sinks) and its max-subtracted copy (softmax in b)
                work = S * b + 2 * S1 * b
                f = "R + N*h*b + q + 2*N*q*b (repeat_kv) + S*b + 2*B*a'*P*(P+1)*b (sinks)"
            else:
                work = S * _eager_score_bytes(prof, s)
                f = "R + N*h*b + q + 2*N*q*b (repeat_kv) + S*(b + 4 + 4)"
        else:
            mask_present = res["masks"] > 0 and layer is not None and layer.attention == "sliding"
            if 1 < s.kv_heads < s.heads and mask_present:
                repeat = 2 * N * q_w * b  # a mask disables SDPA's enable_gqa: repeat_kv
            work = N * q_w * b + 4 * B * s.heads * P  # output + log-sum-exp
            if prof.parallel_residual:
                work += N * q_w * b  # GPT-NeoX: transpose(1, 2).contiguous() copies it
            f = "R + N*h*b + q + N*q*b + 4*B*a'*P (SDPA output, log-sum-exp)"
        attn_live = Xn + q_live + qkv + repeat + work
        moments.append(Moment("prefill/attention", R + attn_live, formula=f,
                              substituted=f"{res_txt} + {Xn} + {q_live + qkv} + {repeat} + {work}"))

    # 3. the norm before the MLP
    if prof.norm == "rms":
        moments.append(Moment("prefill/post_attention_norm", R + X + _rms(s, prof) + probs,
                              formula="R + N*h*b + 2*4*N*h (+ S*b eager probs)",
                              substituted=f"{res_txt} + {X} + {_rms(s, prof)} + {probs}"))

    # 3b. OLMo 2 normalises the MLP's output (post-norm) while the residual waits
    if prof.post_norm:
        moments.append(Moment("prefill/post_mlp_norm", R + 2 * X + _rms(s, prof),
                              formula="R + 2*N*h*b + 2*4*N*h",
                              substituted=f"{res_txt} + {2 * X} + {_rms(s, prof)}"))

    # 4. the MLP (dense or MoE) of the last layer
    is_moe = layer is not None and layer.moe and spec.moe is not None and moe_k > 0
    hidden = prof.mlp_hidden * X
    if is_moe:
        assert spec.moe is not None
        E = spec.moe.num_experts
        sN = N * moe_k  # token-expert pairs
        ie = moe_width
        w = 4 if prof.moe in ("mixtral", "deepseek") else b  # routing weights' dtype
        rb = 4 if prof.moe == "deepseek" else b  # router logits (DeepSeek: fp32 router)
        # router logits (kept by ``_, weights, index = self.gate(x)``), top-k weights and
        # indices, the int64 sort permutation
        routing = N * E * rb + N * moe_k * (w + 8) + 8 * sN
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
        moments.append(Moment("prefill/moe_up", base + up + dequant_bytes,
                              formula=f_up + " (+ routing tensors)",
                              substituted=f"{res_txt} + {hidden + shared_first} + {routing} "
                                          f"+ {up}"))
        moments.append(Moment("prefill/moe_down", base + down,
                              formula="R + 2*N*h*b + 2*s*h*b + 2*s*h*w (weighted, unpermuted)",
                              substituted=f"{res_txt} + {hidden + shared_first} + {routing} "
                                          f"+ {down}"))
        if shared_width:
            sh = 3 * N * shared_width * b
            extra = X if prof.moe == "deepseek" else 0  # routed output kept for the sum
            moments.append(Moment("prefill/shared_expert", R + hidden + extra + sh + probs,
                                  formula="R + 2*N*h*b + 3*N*I_s*b",
                                  substituted=f"{res_txt} + {hidden + extra} + {sh}"))
    else:
        F = N * s.I * b
        coeff = {"gated": 3, "gated_fused": 4, "gelu_new": 4, "plain": 2}[prof.mlp]
        mlp = coeff * F
        moments.append(Moment("prefill/mlp", R + hidden + mlp + probs + dequant_bytes,
                              formula=f"R + {prof.mlp_hidden}*N*h*b + {coeff}*N*I'*b"
                                      + (" + S*b (eager probabilities)" if probs else "")
                                      + (" + dequant" if dequant_bytes else ""),
                              substituted=f"{res_txt} + {hidden} + {mlp} + {probs}"
                                          + (f" + {dequant_bytes}" if dequant_bytes else "")))
    return moments


def logits_moments(spec: ModelSpec, s: Shapes, *, logits: str, last_stage: bool = True,
                   engine: str = "hf") -> list[Moment]:
    """The end of the prefill: the LM head's output and generate()'s fp32 copy of its last row."""
    if not last_stage:
        return []
    B, P, b, h, V = s.B, s.P, s.b, s.h, s.V
    rows = B if logits == "last" else B * P
    lg = rows * V * b
    ids = 8 * B * P
    X = B * P * h * b
    extra = lg if s.softcap_logits else 0  # x / cap, tanh, * cap: two logits-sized at once
    fp32_row = 4 * B * V
    return [
        Moment("prefill/final_norm", ids + X + _rms(s), kv_full=True,
               formula="8*B*P + N*h*b + 2*4*N*h", substituted=f"{ids} + {X} + {_rms(s)}"),
        Moment("prefill/logits", ids + X + extra, logits=lg,
               formula=f"8*B*P + N*h*b + {'B' if logits == 'last' else 'B*P'}*V'*b"
                       + (" (x2: soft-capping)" if extra else ""),
               substituted=f"{ids} + {X} + {lg}" + (f" + {extra}" if extra else "")),
        Moment("prefill/next_token", ids + fp32_row, logits=lg,
               formula="8*B*P + logits + 4*B*V' (fp32 copy of the last row)",
               substituted=f"{ids} + {lg} + {fp32_row}"),
    ]


def decode_moments(spec: ModelSpec, prof: Profile, s: Shapes, *, attn: str, T: int,
                   rep_tokens: int, moe_k: int = 0, moe_width: int = 0,
                   any_moe: bool = False, last_stage: bool = True,
                   sdpa_math: bool = False) -> list[Moment]:
    """Candidate peaks of the last decode step (``T`` cached tokens after it), besides the
    cache's own growth (``engines``: old and new tensors of one layer during ``torch.cat``).

    ``rep_tokens``: the cached tokens of the layer whose ``repeat_kv`` copies are largest.
    """
    B, b, h, V = s.B, s.b, s.h, s.V
    small = decode_resident(s, T, last_stage)
    out: list[Moment] = []
    if spec.mla is not None:
        m = spec.mla
        a = s.heads
        t = rep_tokens
        exp = B * t * a * (m.qk_nope_head_dim + m.v_head_dim) * b + B * a * t * m.qk_head_dim * b
        if attn == "eager":
            work = B * a * t * (b + 4 + 4)
        elif sdpa_math:
            work = B * a * t * (m.qk_head_dim + m.v_head_dim) * 4
        else:
            work = 0
        out.append(Moment("decode/mla_expand", small + exp + work,
                          formula="kv_b(latent): B*T*a'*(d_nope+d_v)*b + K: B*a'*T*d_qk*b"
                                  + (" + fp32 K, V copies (SDPA math path)" if sdpa_math else ""),
                          substituted=f"{small} + {exp} + {work}"))
    elif attn == "eager" and 1 < s.kv_heads < s.heads:
        rep = 2 * B * s.heads * rep_tokens * s.d * b
        out.append(Moment("decode/repeat_kv", small + rep,
                          formula="2*B*a'*T*d*b (repeat_kv of K and V)",
                          substituted=f"{small} + {rep}"))
    if any_moe and moe_k:
        sel = B * moe_k
        coeff = 3 if spec.mlp_gated else 2
        g = coeff * sel * moe_width * h * b
        out.append(Moment("decode/moe_gather", small + g,
                          formula=f"{coeff}*(B*k)*I_e*h*b (batched_mm gathers expert weights)",
                          substituted=f"{small} + {g}"))
    if last_stage:
        lg = B * V * b
        extra = lg if s.softcap_logits else 0
        out.append(Moment("decode/logits", small + extra + 4 * B * V, logits=lg,
                          formula="B*V'*b + 2*4*B*V' (this and the previous fp32 row)",
                          substituted=f"{lg} + {extra} + {4 * B * V} + {small}"))
    return out


def decode_resident(s: Shapes, T: int, last_stage: bool) -> int:
    """What a decode step keeps besides weights and cache: ``input_ids`` (8*B*T) and the
    previous step's fp32 copy of the last logits row (4*B*V')."""
    return 8 * s.B * T + (4 * s.B * s.V if last_stage else 0)


def moment_term(m: Moment, family: str, total: int) -> Term:
    """A :class:`Term` for one moment (its activations + logits)."""
    return Term(m.name.replace("/", "_"), total, m.formula, m.substituted,
                _SRC.format(t=family))


def softcaps(spec: ModelSpec, config: Mapping[str, Any] | None, prof: Profile) -> tuple[bool, bool]:
    """Gemma 2's attention and final-logit soft-capping (on by default; null disables)."""
    if not prof.softcap_default:
        return False, False
    cfg = config or {}
    attn = cfg.get("attn_logit_softcapping", 50.0) is not None
    final = cfg.get("final_logit_softcapping", 30.0) is not None
    return attn, final
