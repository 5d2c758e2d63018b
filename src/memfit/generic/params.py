"""Exact parameter and buffer counts of any transformers model, grouped by component.

The model is built on the meta device (:func:`memfit.generic.build.meta_model`); every
parameter (``named_parameters()``, tied ones once, as ``model.num_parameters()`` counts) is
assigned a component from the names along its module path (:func:`component_of`). The
components are memfit's analytical ones (embeddings, attention, mlp, experts, router, norms,
lm_head) plus ``ssm`` (state-space mixers), ``vision`` (a vision tower), ``projector``
(multimodal projector), ``audio``, ``heads`` (pooler, classifier, MLM transform) and ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GENERIC_COMPONENTS", "GenericParams", "component_of", "count_generic",
           "count_module"]

GENERIC_COMPONENTS = ("embeddings", "attention", "mlp", "experts", "router", "ssm", "norms",
                      "vision", "projector", "audio", "heads", "lm_head", "other")

# Module-path names, matched whole (one dotted part) or as a part's prefix/suffix where said.
_VISION = ("vision_tower", "vision_model", "visual", "vision", "vision_encoder",
           "image_encoder", "vit", "vision_embed_tokens", "image_newline")
_PROJECTOR = ("multi_modal_projector", "mm_projector", "merger", "connector",
              "vision_projection", "embed_vision")
_AUDIO = ("audio_tower", "audio_model", "audio", "audio_encoder", "embed_audio")
_HEADS = ("pooler", "classifier", "score", "qa_outputs", "cls", "predictions",
          "generator_predictions", "discriminator_predictions", "vocab_transform",
          "vocab_layer_norm")
_LM_HEAD = ("lm_head", "embed_out", "output_layer", "decoder", "head", "generator_lm_head",
            "vocab_projector")
_EMBED = ("embed_tokens", "wte", "wpe", "embeddings", "word_embeddings", "embed_positions",
          "embed_in", "embedding", "tok_embeddings", "position_embeddings",
          "token_type_embeddings", "word_embeddings_layernorm", "shared", "embeddings_project")
_EXPERTS = ("experts", "input_linear", "output_linear")
_SHARED = ("shared_expert", "shared_experts", "shared_mlp")
_ROUTER = ("gate", "router", "shared_expert_gate")
_SSM = ("mamba", "mixer", "ssm", "linear_attn", "temporal_block")
_ATTN = ("self_attn", "attention", "attn", "self_attention", "cross_attn", "crossattention",
         "encoder_attn", "SelfAttention", "EncDecAttention")
_MLP = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "intermediate", "output",
        "feedforward", "DenseReluDense", "mlp_block")
# Linear layers that sit directly in a decoder layer (OPT, BART, Whisper: fc1/fc2).
_MLP_LEAF = ("fc1", "fc2", "fc_in", "fc_out", "c_fc", "dense_h_to_4h", "dense_4h_to_h")


def _is_norm(part: str) -> bool:
    p = part.lower()
    return "norm" in p or "ln" in p.split("_")


def component_of(name: str) -> str:
    """The component of a parameter called ``name`` (``model.layers.0.self_attn.q_proj.weight``).

    Outer containers win (a vision tower's attention is ``vision``); then norms (a norm inside
    attention, like Qwen3's q_norm, is counted with attention as memfit's analytical model
    does); then the innermost block kind.
    """
    every = name.split(".")
    parts = every[:-1]  # drop "weight" / "bias"
    for group, keys in (("vision", _VISION), ("projector", _PROJECTOR), ("audio", _AUDIO)):
        if any(p in keys for p in every):
            return group
    if parts and parts[-1] in _LM_HEAD:
        return "lm_head"
    if len(parts) > 1 and parts[0] in ("head", "lm_head"):  # an MLM head's transform
        return "heads"
    if every[-1].startswith("cross_attn"):  # Mllama's gates on its cross-attention blocks
        return "attention"
    if parts and (parts[0] in _HEADS or parts[-1] in ("score", "classifier", "qa_outputs")):
        return "heads"
    block = next((p for p in reversed(parts) if p in _ATTN + _MLP + _SSM + _EXPERTS + _SHARED
                  + _ROUTER), None)
    if block in _ATTN:
        return "attention"
    if block in _EXPERTS:
        return "experts"
    if block in _SHARED:
        return "mlp"
    if block in _ROUTER:
        return "router"
    if block in _SSM:
        return "norms" if parts and _is_norm(parts[-1]) else "ssm"
    if parts and _is_norm(parts[-1]):
        return "norms"
    if block in _MLP or (parts and parts[-1] in _MLP_LEAF):
        return "mlp"
    if any(p in _EMBED for p in parts):
        return "embeddings"
    return "other"


@dataclass(frozen=True)
class GenericParams:
    """Exact counts of one model as transformers builds it (``params --json``)."""

    model: str
    model_type: str
    model_class: str
    total_params: int
    active_params: int
    components: Mapping[str, int] = field(default_factory=dict)
    buffer_elements: int = 0  # buffers (rotary inv_freq, position ids...), persistent or not
    buffer_bytes: int = 0
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_type": self.model_type,
                "total_params": self.total_params, "active_params": self.active_params,
                "components": dict(self.components), "method": "transformers-meta-device",
                "model_class": self.model_class, "buffer_elements": self.buffer_elements,
                "buffer_bytes": self.buffer_bytes, "notes": list(self.notes)}


def count_module(model: Any) -> dict[str, int]:
    """Parameters of ``model`` by component (every :data:`GENERIC_COMPONENTS` key present)."""
    out = dict.fromkeys(GENERIC_COMPONENTS, 0)
    for name, p in model.named_parameters():
        out[component_of(name)] += p.numel()
    return out


def _routing(hf_cfg: Any) -> tuple[int, int] | None:
    """``(E, k)``: routed experts per MoE layer and experts per token, when the config says."""
    cfg = getattr(hf_cfg, "text_config", None) or hf_cfg
    E = next((getattr(cfg, k) for k in ("num_local_experts", "num_experts", "n_routed_experts",
                                        "moe_num_experts") if isinstance(getattr(cfg, k, None),
                                                                         int)), None)
    k = next((getattr(cfg, key) for key in ("num_experts_per_tok", "top_k", "moe_topk",
                                            "num_selected_experts")
              if isinstance(getattr(cfg, key, None), int)), None)
    return (E, k) if E and k else None


def count_generic(config: Mapping[str, Any], name: str = "model") -> GenericParams:
    """Parameters by component, active parameters and buffers of the meta-device model.

    Active parameters (what one token uses) remove the unrouted share ``(E - k) / E`` of the
    routed experts, as :func:`memfit.memory.params.count_params` does; without a readable
    ``E`` and ``k`` they equal the total and a note says so.
    """
    from .build import meta_model

    model, hf_cfg, _ = meta_model(config)
    components = count_module(model)
    total = sum(components.values())
    notes = [f"counted from transformers' {type(model).__name__} built on the meta device "
             f"(model_type {hf_cfg.model_type!r}: no analytical model in memfit)"]
    active = total
    routing = _routing(hf_cfg)
    if components["experts"]:
        if routing is None:
            notes.append("active = total: no expert count / top-k found in the config")
        else:
            E, k = routing
            active = total - components["experts"] + components["experts"] * k // E
    buffers = list(model.buffers())
    return GenericParams(
        model=name, model_type=hf_cfg.model_type, model_class=type(model).__name__,
        total_params=total, active_params=active,
        components={k: v for k, v in components.items() if v},
        buffer_elements=sum(b.numel() for b in buffers),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        notes=tuple(notes))
