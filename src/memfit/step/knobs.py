"""The training knobs of issue 16, resolved and checked against the model: which modules get
LoRA adapters, and the knobs memfit does not model yet (refused by name, never dropped)."""

from __future__ import annotations

from ..arch import ModelSpec
from ..errors import MemfitError
from ..workload import TrainingOptions

__all__ = ["LORA_ALL", "lora_targets", "check_knobs", "target_names", "expert_targets"]

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
    # the layer kinds the model has (Mixtral has no dense MLP: no gate/up/down_proj modules)
    for moe in {x.moe and spec.moe is not None for x in spec.layers}:
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
    thousand parameters, not counted); ``peft-default``: peft's default for the model type
    (what a ``LoraConfig`` without ``target_modules`` adapts);
    ``attention`` / ``mlp``: the q/k/v/o or MLP projections the model has; else a comma list
    of module names (``q_proj,v_proj``), each one the model has.
    """
    have = _model_targets(spec)
    present = frozenset(have.values())
    if value == "all-linear":
        return present
    if value == "peft-default":
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
            "lora-targets", value, "all-linear, peft-default, attention, mlp or a comma list "
            "of the "
            f"model's projections ({', '.join(sorted(have))})"
            + (f"; not in the model: {', '.join(bad)}" if bad else ""))
    return frozenset(have[n] for n in names)


_EXPERT_TAGS = ("expert_gate", "expert_up", "expert_down")


def expert_targets(spec: ModelSpec, value: str) -> tuple[str, frozenset[str]]:
    """transformers 4's per-expert ``nn.Linear`` modules that ``--lora-targets`` adapts, and
    the rest of the value for :func:`lora_targets`. peft matches ``target_modules`` by
    module-name suffix (tuners_utils.py ``check_target_module_exists``) and ``all-linear``
    takes every ``nn.Linear`` but the output layer (``_maybe_include_all_linear_layers``):
    all-linear adapts every expert (and an ``nn.Linear`` router, ``gate``); ``mlp`` the
    experts when they share the dense MLP's names (Qwen-MoE, DeepSeek, not Mixtral's
    w1/w3/w2); a comma list the experts it names."""
    from ..memory.model_states import V4_EXPERTS

    names, router_linear = V4_EXPERTS[spec.model_type]
    tags = dict(zip(names, _EXPERT_TAGS, strict=True))
    if value == "all-linear":
        return value, frozenset(_EXPERT_TAGS) | ({"router"} if router_linear else set())
    if value == "mlp":
        return value, frozenset(_EXPERT_TAGS) if names[0] == "gate_proj" else frozenset()
    if value in ("attention", "peft-default"):
        return value, frozenset()
    parts = [n.strip() for n in value.split(",") if n.strip()]
    hit = {tags[n] for n in parts if n in tags} | (
        {"router"} if router_linear and "gate" in parts else set())
    have = _model_targets(spec)
    rest = [n for n in parts if n in have or (n not in tags and n != "gate")]
    return ",".join(rest), frozenset(hit)


def target_names(spec: ModelSpec, targets: frozenset[str]) -> list[str]:
    """The module names of ``targets`` in the model (for the report)."""
    out = [name for name, t in sorted(_model_targets(spec).items(),
                                      key=lambda kv: (_ORDER.index(kv[1]), kv[0]))
           if t in targets]
    if targets & {*_EXPERT_TAGS, "router"}:
        from ..memory.model_states import V4_EXPERTS

        names, _ = V4_EXPERTS[spec.model_type]
        out += [f"experts.{n}" for n, t in zip(names, _EXPERT_TAGS, strict=True)
                if t in targets] + (["gate (router)"] if "router" in targets else [])
    return out


def _not_yet(field: str, value: object, allowed: str) -> MemfitError:
    return MemfitError.bad_value(field, value, f"{allowed} (not modelled yet)")


def check_knobs(spec: ModelSpec, o: TrainingOptions) -> frozenset[str]:
    """Refuse the knobs memfit does not model (or that need adapters); the LoRA targets."""
    lora = o.lora_rank is not None
    if not lora:
        for name, default in (("lora_targets", "all-linear"), ("lora_dropout", 0.0),
                              ("dora", False), ("lora_experts", False)):
            if getattr(o, name) != default:
                raise MemfitError.bad_value(name.replace("_", "-"), getattr(o, name),
                                            f"{default} without --lora-rank or --qlora (no "
                                            "adapters to apply it to)")
    if o.no_kbit_prepare and not o.qlora:
        raise MemfitError.bad_value("no-kbit-prepare", True, "off without --qlora (it names "
                                    "QLoRA's activation stream)")
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
    if o.loss == "liger" and o.qlora:
        raise _not_yet("loss", o.loss, "hf or chunked with QLoRA")
    if o.loss == "cce":
        if o.precision not in ("bf16-true", "fp16-true"):
            raise MemfitError.bad_value("loss", o.loss, "hf, chunked or liger with "
                                        f"{o.precision} (Cut Cross-Entropy's backward needs "
                                        "16-bit hidden states and head: bf16-true, fp16-true)")
        if o.qlora or o.tp > 1 or o.cp > 1 or o.pp > 1:
            raise _not_yet("loss", o.loss, "hf, chunked or liger with QLoRA or tensor, context "
                           "or pipeline parallelism")
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
    return _targets(spec, o, lora)


def _targets(spec: ModelSpec, o: TrainingOptions, lora: bool) -> frozenset[str]:
    """:func:`check_knobs`' second half: transformers 4's experts, the LoRA targets, and the
    target rules."""
    experts: frozenset[str] = frozenset()
    value = o.lora_targets
    if _v4_experts(spec, o):
        if o.precision.endswith("-mixed"):
            raise _not_yet("transformers", 4, "5 for a MoE model under autocast (nn.Linear "
                           "experts are autocast ops, transformers 5's grouped_mm is not)")
        if o.lora_experts:
            raise MemfitError.bad_value("lora-experts", True, "off with --transformers 4 "
                                        "(its per-expert nn.Linear modules are adapted by "
                                        "name: --lora-targets all-linear or the experts' "
                                        "names)")
        if lora:
            value, experts = expert_targets(spec, value)
    if not lora:
        return LORA_ALL
    if experts and o.dora:
        raise _not_yet("dora", True, "off with adapters on transformers 4's experts")
    targets = lora_targets(spec, value) if value or not experts else frozenset()
    if not (targets or experts or o.lora_experts):
        raise MemfitError.bad_value("lora-targets", o.lora_targets, "targets that match a "
                                    f"module of {spec.model_type} (peft refuses a config "
                                    "that adapts nothing)")
    if not targets & {"q", "k", "v"} and (spec.model_type == "olmo2" or "o" in targets):
        raise _not_yet("lora-targets", o.lora_targets, "targets with a q/k/v projection, or "
                       "MLP projections only (outside OLMo 2)")
    if spec.mla is not None and targets != lora_targets(spec, "all-linear"):
        raise _not_yet("lora-targets", o.lora_targets, "all-linear for multi-head latent "
                       "attention")
    if o.lora_dropout and spec.mla is not None:
        raise _not_yet("lora-dropout", o.lora_dropout, "0 for multi-head latent attention")
    return targets | experts


def _v4_experts(spec: ModelSpec, o: TrainingOptions) -> bool:
    """transformers 4's per-expert layout applies (a MoE model whose experts it kept as
    nn.Linear modules); a v4 MoE model whose layout memfit does not know is refused."""
    if o.transformers == 5 or spec.moe is None:
        return False
    from ..memory.model_states import V4_EXPERTS

    if spec.model_type in V4_EXPERTS:
        return True
    if spec.model_type in ("granitemoe", "gpt_oss"):
        return False  # 3-D expert tensors in transformers 4 too: the same layout
    raise _not_yet("transformers", 4, f"5 for {spec.model_type!r} (its transformers 4 expert "
                   "layout is not modelled)")
