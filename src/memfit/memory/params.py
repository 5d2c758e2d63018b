"""Exact parameter counts, by component, from a :class:`~memfit.arch.ModelSpec`.

Exact means equal to ``sum(p.numel() for p in model.parameters())`` of the transformers model
built from the same config (tests check every catalog entry on the meta device). Shapes follow
``transformers/models/<type>/modeling_<type>.py`` (5.x); symbols as in ``arch.ModelSpec``:
L layers, h hidden, a heads, a_kv KV heads, d head dim, I MLP width, V vocabulary, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import ModelSpec

__all__ = ["ParamCounts", "count_params", "attention_params", "mlp_params", "expert_params",
           "norm_params_per_layer", "buffer_elements", "COMPONENTS"]

COMPONENTS = ("embeddings", "attention", "mlp", "experts", "router", "norms", "lm_head")


@dataclass(frozen=True)
class ParamCounts:
    """Parameters per component; ``total`` is their sum, ``active`` what one token uses."""

    embeddings: int  # token table V*h (+ learned positions P*h)
    attention: int  # projections, their biases, q/k norms, sinks, MLA's low-rank norms
    mlp: int  # dense MLPs and MoE shared experts (+ their gate)
    experts: int  # routed experts (all of them: every expert is resident)
    router: int  # MoE routers (gate)
    norms: int  # per-layer norms and the final norm
    lm_head: int  # 0 when tied to the embeddings
    active: int  # per token: everything but the (E - k) / E unrouted share of experts

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in COMPONENTS)

    def as_dict(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in COMPONENTS}


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    """``nn.Linear(n_in, n_out, bias)``: n_in*n_out weights (+ n_out bias)."""
    return n_in * n_out + (n_out if bias else 0)


def _norm(spec: ModelSpec, width: int) -> int:
    """One norm over ``width``: a weight, plus a bias for LayerNorm with bias."""
    return width * (2 if spec.norm_bias else 1)


def attention_params(spec: ModelSpec) -> int:
    """One layer's attention block.

    GQA/MHA: q h*(a*d), k and v h*(a_kv*d) each, o (a*d)*h, optional biases, q/k norms over
    d ("head": Qwen3, Gemma 3) or over the projection ("full": OLMo 2), gpt-oss's a sinks.
    MLA (DeepSeek-V2/V3, ``DeepseekV3Attention``): q_a h*r_q + norm r_q
    + q_b r_q*a*(d_nope+d_rope) (or a plain q_proj when r_q is None),
    kv_a h*(r_kv+d_rope) + norm r_kv, kv_b r_kv*a*(d_nope+d_v),
    o (a*d_v)*h; ``attention_bias`` adds biases to q_a, kv_a and o.
    """
    h, a = spec.hidden_size, spec.num_heads
    m = spec.mla
    if m is not None:
        bias = spec.qkv_bias
        if m.q_lora_rank is None:
            q = _linear(h, a * m.qk_head_dim, False)
        else:
            q = (_linear(h, m.q_lora_rank, bias) + m.q_lora_rank
                 + _linear(m.q_lora_rank, a * m.qk_head_dim, False))
        kv = (_linear(h, m.kv_lora_rank + m.qk_rope_head_dim, bias) + m.kv_lora_rank
              + _linear(m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim), False))
        o = _linear(a * m.v_head_dim, h, spec.o_bias)
        return q + kv + o
    q_dim, kv_dim = spec.q_dim, spec.kv_dim
    n = (_linear(h, q_dim, spec.qkv_bias) + 2 * _linear(h, kv_dim, spec.qkv_bias)
         + _linear(q_dim, h, spec.o_bias))
    if spec.qk_norm == "head":
        n += 2 * spec.head_dim
    elif spec.qk_norm == "full":
        n += q_dim + kv_dim
    if spec.attention_sinks:
        n += a
    return n


def mlp_params(spec: ModelSpec, width: int) -> int:
    """One dense MLP of hidden width ``width``: gated 3*h*I (gate, up, down) or plain 2*h*I."""
    h = spec.hidden_size
    n_in = 2 if spec.mlp_gated else 1
    return n_in * _linear(h, width, spec.mlp_bias) + _linear(width, h, spec.mlp_bias)


def expert_params(spec: ModelSpec) -> int:
    """One routed expert: 3*h*I_e (gate_up [2*I_e, h] and down [h, I_e]), gpt-oss adds biases."""
    assert spec.moe is not None
    h, i = spec.hidden_size, spec.moe.expert_intermediate_size
    n = 3 * h * i if spec.mlp_gated else 2 * h * i
    if spec.moe.expert_bias:
        n += 2 * i + h
    return n


def norm_params_per_layer(spec: ModelSpec) -> int:
    """The layer norms of one decoder layer (2, or 4 for Gemma 2/3), each over h."""
    return spec.norms_per_layer * _norm(spec, spec.hidden_size)


def _router_params(spec: ModelSpec) -> int:
    """One MoE router: E*h (+ E bias for gpt-oss) (+ Qwen2-MoE's shared-expert gate h*1)."""
    assert spec.moe is not None
    m = spec.moe
    n = m.num_experts * spec.hidden_size + (m.num_experts if m.router_bias else 0)
    if m.shared_expert_gate:
        n += spec.hidden_size
    return n


def count_params(spec: ModelSpec) -> ParamCounts:
    """Every parameter of the model, by component (see :class:`ParamCounts`)."""
    h, V, L = spec.hidden_size, spec.vocab_size, spec.num_layers
    embeddings = V * h + spec.learned_positions * h
    attention = L * attention_params(spec)
    norms = L * norm_params_per_layer(spec) + _norm(spec, h)
    lm_head = 0 if spec.tie_word_embeddings else V * h
    n_moe = spec.num_moe_layers
    mlp = spec.num_dense_layers * mlp_params(spec, spec.intermediate_size)
    experts = router = active_experts = 0
    if spec.moe is not None and n_moe:
        m = spec.moe
        per_expert = expert_params(spec)
        experts = n_moe * m.num_experts * per_expert
        active_experts = n_moe * m.top_k * per_expert
        router = n_moe * _router_params(spec)
        if m.shared_intermediate_size:
            mlp += n_moe * mlp_params(spec, m.shared_intermediate_size)
    total_other = embeddings + attention + norms + lm_head + mlp + router
    return ParamCounts(embeddings=embeddings, attention=attention, mlp=mlp, experts=experts,
                       router=router, norms=norms, lm_head=lm_head,
                       active=total_other + active_experts)


def buffer_elements(spec: ModelSpec) -> int:
    """fp32 buffer elements that are not parameters but occupy memory with the weights.

    Rotary embeddings keep ``inv_freq`` and ``original_inv_freq`` (rope_dim / 2 each; Gemma 3
    has one set per attention type present); DeepSeek-V3 keeps an
    ``e_score_correction_bias`` of E per MoE layer; Gemma 1/2/3 an ``embed_scale`` scalar.
    """
    n = 0
    if spec.rope_dim:
        sets = len({x.attention for x in spec.layers}) if spec.model_type == "gemma3_text" else 1
        n += sets * 2 * (spec.rope_dim // 2)
    if spec.moe is not None and spec.moe.router_score_bias:
        n += spec.num_moe_layers * spec.moe.num_experts
    return n + spec.extra_buffers
