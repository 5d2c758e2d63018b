"""The training knobs of issue 16, resolved and checked against the model: which modules get
LoRA adapters, and the knobs memfit does not model yet (refused by name, never dropped)."""

from __future__ import annotations

from ..arch import ModelSpec
from ..errors import MemfitError
from ..workload import TrainingOptions

__all__ = ["LORA_ALL", "lora_targets", "check_knobs", "target_names"]

#: Every projection memfit can put an adapter on, in its names (``TensorGroup.lora``).
LORA_ALL = frozenset(("q", "k", "v", "o", "gate", "up", "down"))
_ORDER = ("q", "k", "v", "o", "gate", "up", "down")

#: peft's default targets (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``,
#: peft/utils/constants.py, peft 0.21.2) for the model types memfit knows, in memfit's names.
#: GPT-2's ``c_attn`` and GPT-NeoX's ``query_key_value`` are the fused q/k/v projection.
#: Types absent here have no peft default (peft asks for ``target_modules``).
PEFT_DEFAULT = {
    **{t: frozenset(("q", "v")) for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3",
                                           "gemma", "gemma2", "gemma3_text")},
    "gpt2": frozenset(("q",)), "gpt_neox": frozenset(("q",)),
}

# module names a user may write, by model family naming, to memfit's names
_MODULE_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
    "up_proj": "up", "down_proj": "down", "qkv_proj": "q", "gate_up_proj": "gate",
    "c_attn": "q", "query_key_value": "q",
}


def _model_targets(spec: ModelSpec) -> dict[str, str]:
    """The model's adaptable projections: module name -> memfit name (memoised per spec)."""
    from ..memory.weights import memo_table

    memo = memo_table(spec)
    out = memo.get("lora-modules")
    if out is None:
        out = memo["lora-modules"] = _find_targets(spec)
    return out  # type: ignore[no-any-return]


def _find_targets(spec: ModelSpec) -> dict[str, str]:
    from ..memory.model_states import layer_tensors

    out: dict[str, str] = {}
    for moe in {False, spec.moe is not None and any(x.moe for x in spec.layers)}:
        for g in layer_tensors(spec, moe, 1, 1):
            if g.lora and len(g.shape) == 2:
                out[g.name.rsplit(".", 1)[-1]] = g.lora
    return out


def lora_targets(spec: ModelSpec, value: str) -> frozenset[str]:
    """``--lora-targets`` as memfit's names (memoised per spec; see :func:`_lora_targets`)."""
    from ..memory.weights import memo_table

    memo = memo_table(spec)
    key = ("lora-targets", value)
    out = memo.get(key)
    if out is None:
        out = memo[key] = _lora_targets(spec, value)
    return out  # type: ignore[no-any-return]


def _lora_targets(spec: ModelSpec, value: str) -> frozenset[str]:
    """``--lora-targets`` as the set of memfit names (see :data:`LORA_ALL`).

    ``all-linear``: peft's shorthand, every linear layer but the output embedding (here the
    q/k/v/o and MLP projections; peft also adapts a MoE router and shared-expert gate, a few
    thousand parameters, not counted); ``peft``: peft's default for the model type;
    ``attention`` / ``mlp``: the q/k/v/o or MLP projections the model has; else a comma list
    of module names (``q_proj,v_proj``), each one the model has.
    """
    have = _model_targets(spec)
    present = frozenset(have.values())
    if value == "all-linear":
        return present
    if value == "peft":
        default = PEFT_DEFAULT.get(spec.model_type)
        if default is None:
            raise MemfitError.bad_value(
                "lora-targets", value, "all-linear, attention, mlp or module names (peft has "
                f"no default target modules for {spec.model_type!r})")
        return default & present
    if value in ("attention", "mlp"):
        want = frozenset(("q", "k", "v", "o") if value == "attention" else
                         ("gate", "up", "down"))
        return want & present
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in have]
    if not names or bad:
        raise MemfitError.bad_value(
            "lora-targets", value, "peft, all-linear, attention, mlp or a comma list of the "
            f"model's projections ({', '.join(sorted(have))})"
            + (f"; not in the model: {', '.join(bad)}" if bad else ""))
    return frozenset(have[n] for n in names)


def target_names(spec: ModelSpec, targets: frozenset[str]) -> list[str]:
    """The module names of ``targets`` in the model (for the report)."""
    return [name for name, t in sorted(_model_targets(spec).items(),
                                       key=lambda kv: (_ORDER.index(kv[1]), kv[0]))
            if t in targets]


def _not_yet(field: str, value: object, allowed: str) -> MemfitError:
    return MemfitError.bad_value(field, value, f"{allowed} (not modelled yet)")


def check_knobs(spec: ModelSpec, o: TrainingOptions) -> frozenset[str]:
    """Refuse the knobs memfit does not model (or that need adapters); the LoRA targets."""
    lora = o.lora_rank is not None
    if not lora:
        for name, default in (("lora_targets", "peft"), ("lora_dropout", 0.0),
                              ("dora", False), ("lora_experts", False)):
            if getattr(o, name) != default:
                raise MemfitError.bad_value(name.replace("_", "-"), getattr(o, name),
                                            f"{default} without --lora-rank or --qlora (no "
                                            "adapters to apply it to)")
    if o.qlora_stream != "fp32" and not o.qlora:
        raise MemfitError.bad_value("qlora-stream", o.qlora_stream,
                                    "fp32 without --qlora (it names QLoRA's activation stream)")
    if o.loss != "chunked" and o.loss_chunks != 8:
        raise MemfitError.bad_value("loss-chunks", o.loss_chunks,
                                    "8 (the default) unless --loss chunked")
    if o.checkpoint_every != 1 and o.checkpointing not in ("full", "op-selective"):
        raise MemfitError.bad_value("checkpoint-every", o.checkpoint_every,
                                    "1 without --checkpointing full|op-selective")
    if o.fsdp_version != 2 and o.fsdp is None:
        raise MemfitError.bad_value("fsdp-version", o.fsdp_version,
                                    "2 (the default) without --fsdp")
    if o.lora_experts and (spec.moe is None or o.qlora or o.fsdp is not None or o.dora):
        raise _not_yet("lora-experts", True, "off for a dense model, with QLoRA, FSDP or DoRA")
    if o.dora and (o.qlora or o.fsdp is not None or spec.mla is not None):
        raise _not_yet("dora", True, "off with QLoRA, FSDP or multi-head latent attention")
    if o.loss == "fused-linear" and o.qlora:
        raise _not_yet("loss", o.loss, "hf or chunked with QLoRA")
    if o.optimizer_in_backward:
        if o.microbatches != 1:
            raise MemfitError.bad_value("microbatches", o.microbatches, "1 with "
                                        "--optimizer-in-backward (no gradient accumulation: "
                                        "torchtune refuses it too)")
        if o.precision == "bf16-master" or o.zero or o.fsdp is not None or o.pp > 1:
            raise _not_yet("optimizer-in-backward", True, "off with bf16-master, ZeRO, FSDP "
                           "or pipeline parallelism")
    if o.fsdp_version == 1 and (o.precision.endswith("-mixed") or o.precision == "bf16-master"
                                or o.fsdp != "full" or lora or o.offload != "none"):
        raise _not_yet("fsdp-version", 1, "2, or 1 with --fsdp full and fp32, bf16-true or "
                       "fp16-true, no adapters, no offload")
    if o.checkpoint_every > 1 and lora and o.precision.endswith("-mixed"):
        raise _not_yet("checkpoint-every", o.checkpoint_every, "1 with LoRA under autocast")
    if o.checkpointing == "op-selective" and spec.mla is not None:
        raise _not_yet("checkpointing", o.checkpointing, "none, full or selective for "
                       "multi-head latent attention")
    if o.optimizer in ("paged-adamw", "paged-adamw-8bit") and (o.zero or o.fsdp is not None):
        raise _not_yet("optimizer", o.optimizer, "adamw, adamw-8bit, sgd, sgd-momentum, "
                       "adafactor or lion with ZeRO or FSDP")
    if not lora:
        return LORA_ALL
    targets = lora_targets(spec, o.lora_targets)
    if not targets & {"q", "k", "v"} and (spec.model_type == "olmo2" or "o" in targets):
        raise _not_yet("lora-targets", o.lora_targets, "targets with a q/k/v projection, or "
                       "MLP projections only (outside OLMo 2)")
    if spec.mla is not None and targets != lora_targets(spec, "all-linear"):
        raise _not_yet("lora-targets", o.lora_targets, "all-linear for multi-head latent "
                       "attention")
    if o.lora_dropout and spec.mla is not None:
        raise _not_yet("lora-dropout", o.lora_dropout, "0 for multi-head latent attention")
    return targets
