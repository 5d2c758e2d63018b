"""Training memory per GPU: ``train()`` builds the timeline of one optimizer step, ``fit_train()``
answers the inverse questions (largest micro-batch, longest sequence, layouts that fit).

One step, steady state (the optimizer state already exists), on the most loaded rank:

* **forward**: resident model states + saved activations of every layer + (mixed recipes)
  autocast's 16-bit weight copies, peaking at the loss, where the logits, their fp32 copy
  and ``log_softmax``'s fp32 output are live together;
* **backward**: it starts with two more fp32 B x S x V tensors (the gradients of the loss and
  of ``log_softmax``), then walks the layers backwards: each layer's gradients appear as its
  saved activations go; it ends with every gradient and, for tied embeddings, the two
  partial gradients of the shared table being summed;
* **optimizer**: weights, gradients (fp32 ones for bf16-master), optimizer state and the
  step's temporaries (``foreach`` copies a whole state, ``fused`` none).

The peak is the largest of the three. Model states come from
:mod:`memfit.memory.model_states`, activations from :mod:`memfit.memory.activations`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from .arch import ModelSpec
from .catalog import resolve_model
from .errors import MemfitError
from .memory.activations import (
    NO_SDPA,
    NORM_STYLES,
    ActivationSetup,
    dropout_config,
    embedding_activations,
    head_activations,
    korthikanti_per_layer,
    layer_activations,
    lora_unsaved_prefix,
    mask_bytes,
    rotary_bytes,
    softcap_config,
)
from .memory.breakdown import Estimate, LazyTerms, Phase, Term
from .memory.model_states import (
    DEEPSPEED_DEFAULTS,
    FsdpConfig,
    Recipe,
    StateInputs,
    TensorGroup,
    fsdp_padded_elements,
    get_optimizer,
    get_recipe,
    layer_tensors,
    optimizer_host_step_bytes,
    optimizer_state_bytes,
    optimizer_temporary_bytes,
    rank_tensors,
    shard_states,
    tensor_elements,
)
from .memory.overhead import overhead_terms
from .memory.params import buffer_elements
from .memory.weights import memo_table
from .parallel import ParallelPlan, stage_layers
from .solve import largest_true
from .workload import MAX_COUNT, TrainingOptions, default_within, make_options

__all__ = ["train", "fit_train", "FitResult", "LayoutFit", "LORA_TARGETS"]

ModelLike = str | Path | Mapping[str, Any] | ModelSpec

#: peft target modules of ``--lora-rank`` (contract): q, k, v, o, gate, up, down.
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_QLORA_FORMAT = "nf4-dq"

# Extra keyword options of the Python API (beside TrainingOptions' fields).
_API_OPTIONS = ("states_convention", "gpus_per_node")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def _validate(spec: ModelSpec, o: TrainingOptions) -> ParallelPlan:
    """The layout rules beyond each option's own range; errors name the field."""
    plan = ParallelPlan(tp=o.tp, pp=o.pp, dp=o.dp, cp=o.cp, ep=o.ep, sp=o.sp)
    try:
        plan.validate(spec)
    except MemfitError as exc:
        raise MemfitError(f"{exc} (layout dp={o.dp} tp={o.tp} pp={o.pp} cp={o.cp} ep={o.ep})",
                          field=exc.field, value=exc.value, allowed=exc.allowed) from None
    if o.zero >= 2 and o.pp > 1:
        raise MemfitError.bad_value("zero", o.zero, "0 or 1 with --pp > 1 (DeepSpeed runs "
                                    "pipeline parallelism with ZeRO stage 0 or 1 only)")
    if o.fsdp is not None and o.dp == 1:
        raise MemfitError.bad_value("fsdp", o.fsdp, "only with --dp > 1 (one rank has nothing "
                                    "to shard with)")
    if o.offload != "none" and not o.zero and o.fsdp is None:
        raise MemfitError.bad_value("offload", o.offload, "none without --zero or --fsdp "
                                    "(DeepSpeed offload needs ZeRO >= 1, parameters ZeRO-3)")
    if o.offload == "params" and o.zero in (1, 2):
        raise MemfitError.bad_value("offload", o.offload, "optimizer or none with --zero "
                                    f"{o.zero} (offloading parameters needs ZeRO-3 or FSDP)")
    if o.cp > 1 and o.seq % o.cp:
        raise MemfitError.bad_value("seq", o.seq, f"a multiple of --cp={o.cp}")
    if spec.learned_positions and o.seq > spec.learned_positions:
        raise MemfitError.bad_value("seq", o.seq, f"<= {spec.learned_positions} (the model's "
                                    "learned position table n_positions)")
    return plan


# ---------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------

@dataclass
class _Ctx:
    spec: ModelSpec
    config: Mapping[str, Any] | None
    o: TrainingOptions
    recipe: Recipe
    runtime: str  # "autocast", "deepspeed", "fsdp", "plain"
    gpus_per_node: int
    attn: str = "sdpa"  # the attention that runs (Gemma 2 falls back to eager)
    lora_bytes: int = 4  # LoRA adapter dtype bytes


def _weight_bytes(groups: tuple[TensorGroup, ...], recipe: Recipe, qlora: bool) -> int:
    """Bytes of the weights on the rank: the recipe's b_w per element (fp32 for tensors the
    model keeps in fp32); QLoRA: base linears in NF4 with double quantization
    (:func:`memfit.dtypes.tensor_bytes`), everything else upcast to fp32 by peft's
    ``prepare_model_for_kbit_training``."""
    if not qlora:
        return sum(g.elements * (4 if g.fp32 else recipe.weight_bytes) for g in groups)
    from .dtypes import tensor_bytes

    total = 0
    for g in groups:
        if g.linear and len(g.shape) == 2 and g.part == "layer":
            total += tensor_bytes(g.shape, _QLORA_FORMAT) * g.count
        else:
            total += 4 * g.elements
    return total


def _adapters(groups: tuple[TensorGroup, ...], r: int) -> tuple[TensorGroup, ...]:
    """LoRA's A (r x in) and B (out x r) for every targeted linear."""
    out = []
    for g in groups:
        if g.lora in LORA_TARGETS and len(g.shape) == 2:
            n_out, n_in = g.shape
            out.append(TensorGroup(f"{g.name}.lora_A", (r, n_in), g.count, g.part))
            out.append(TensorGroup(f"{g.name}.lora_B", (n_out, r), g.count, g.part))
    return tuple(out)


def _linear_elements(groups: tuple[TensorGroup, ...]) -> int:
    """Elements autocast casts to 16 bits: matmul weights and the biases fused with them."""
    n = 0
    for g in groups:
        if g.name.startswith("experts."):
            continue  # grouped_mm is not an autocast op: the experts run in fp32
        if g.linear or g.name.endswith("_proj.bias") or g.name.endswith("proj.bias"):
            n += g.elements
    return n


def _stage_estimate(c: _Ctx, stage: int, counts: list[int]) -> dict[str, Any]:
    """Phases, terms and host bytes of one pipeline stage's rank."""
    spec, o, recipe = c.spec, c.o, c.recipe
    pp = o.pp
    first, last = stage == 0, stage == pp - 1
    start = sum(counts[:stage])
    layers = spec.layers[start:start + counts[stage]]
    n_moe = sum(1 for x in layers if x.moe)
    n_dense = len(layers) - n_moe
    memo = _memo(spec)
    gkey = ("groups", o.tp, o.ep, n_dense, n_moe, first, last)
    groups = memo.get(gkey)
    if groups is None:
        groups = memo[gkey] = rank_tensors(spec, tp=o.tp, ep=o.ep, dense_layers=n_dense,
                                           moe_layers=n_moe, first=first, last=last)
    lora = o.lora_rank is not None
    ab = c.lora_bytes  # adapter weights and gradients: fp32 (peft default) or bf16 (qlora.py)
    state_b = 4 if lora else recipe.state_bytes
    grad_b = ab if lora else recipe.grad_bytes
    eff = recipe if not lora else replace(recipe, grad_bytes=ab, step_grad_bytes=ab,
                                          master_bytes=0, state_bytes=4, extra_grad_bytes=0)
    opt = get_optimizer(o.optimizer, o.optimizer_impl)
    skey = ("states", gkey, recipe, o.lora_rank, o.qlora, o.optimizer, o.optimizer_impl,
            len(layers), ab)
    cached = memo.get(skey)
    if cached is None:
        cached = memo[skey] = _state_inputs(spec, groups, recipe, opt, o, lora, state_b, first,
                                            len(layers), ab)
    xin, trainable, linear_el, parts = cached
    P = xin.trainable
    fsdp_cfg = FsdpConfig(gpus_per_node=c.gpus_per_node)
    padded = padded_layers = 0
    if o.fsdp is not None:
        n_shards = min(o.dp, fsdp_cfg.gpus_per_node) if o.fsdp == "hybrid" else o.dp
        pkey = ("padded", skey, n_shards)
        if pkey not in memo:
            memo[pkey] = (fsdp_padded_elements(trainable, n_shards), fsdp_padded_elements(
                tuple(g for g in trainable if g.part == "layer"), n_shards))
        padded, padded_layers = memo[pkey]
    sb = shard_states(xin, eff, dp=o.dp, zero=o.zero, fsdp=o.fsdp, offload=o.offload,
                      fsdp_cfg=fsdp_cfg, padded=padded)
    N = sb.shards

    # -- activations per micro-batch -------------------------------------------------------
    autocast = c.runtime == "autocast"
    b = recipe.compute_bytes
    # QLoRA: bitsandbytes casts each NF4 matmul's output back to its input's dtype, and
    # peft's fp32 embedding makes that fp32: every activation outside the matmuls is fp32
    # (under FSDP2 the policy casts the embedding to 16 bits).
    fp32_stream = o.qlora and o.fsdp is None
    residual = 4 if (autocast or b == 4 or fp32_stream) else 2
    attn_softcap, logit_softcap = softcap_config(spec, c.config)
    setup = ActivationSetup(batch=o.batch, seq=o.seq // o.cp,
                            compute_bytes=4 if fp32_stream else b,
                            residual_bytes=residual, autocast=autocast, attn=c.attn, tp=o.tp,
                            attn_softcap=attn_softcap, logit_softcap=logit_softcap,
                            sp=o.sp, ep=o.ep, cp=o.cp, lora=lora, lora_rank=o.lora_rank or 0,
                            # FSDP2's MixedPrecisionPolicy casts the adapters too
                            lora_bytes=recipe.compute_bytes if o.fsdp else c.lora_bytes,
                            qlora=o.qlora, dropout=dropout_config(spec, c.config),
                            full_seq=o.seq, use_cache=_use_cache(c.config, o))
    T = setup.tokens
    h = spec.hidden_size
    V = -(-spec.vocab_size // o.tp)
    # The stage's layer kinds (first-appearance order), each layer's kind index and the
    # count of each kind: activations are worked out once per kind, not once per layer.
    kkey = ("kinds", start, len(layers))
    stage_kinds = memo.get(kkey)
    if stage_kinds is None:
        order = {x: None for x in layers}
        kind_list = list(order)
        index = {x: i for i, x in enumerate(kind_list)}
        layer_kind = [index[x] for x in layers]
        stage_kinds = memo[kkey] = (kind_list, layer_kind,
                                    [layer_kind.count(i) for i in range(len(kind_list))])
    kind_list, layer_kind, kind_count = stage_kinds
    acts = []
    for x in kind_list:
        key = ("act", x, setup)
        act = memo.get(key)
        if act is None:
            act = memo[key] = layer_activations(spec, x, setup)
        acts.append(act)
    per = [acts[i] for i in layer_kind]
    kind_total = [act.total for act in acts]
    totals = [kind_total[i] for i in layer_kind]
    ckpt = o.checkpointing
    sp_div = o.tp if o.sp else 1
    ckpt_input = T * residual * h // sp_div
    if ckpt == "full":
        kept = [ckpt_input for _ in per]
    elif ckpt == "selective":
        kind_kept = [kind_total[i] - act.s2 for i, act in enumerate(acts)]
        kept = [kind_kept[i] for i in layer_kind]
    else:
        kept = totals
    if first and kept and ckpt != "full":
        kept = [kept[0] - lora_unsaved_prefix(spec, setup), *kept[1:]]
    emb = embedding_activations(spec, setup) if first else {}
    # the logits' dtype: QLoRA's LM head is fp32 (peft), but an autocast op all the same
    logit_b = 4 if (b == 4 or (fp32_stream and not autocast)) else b
    head = head_activations(spec, setup, logit_b) if last else {}
    masks = mask_bytes(spec, setup)  # not saved: freed when the forward returns
    shared = rotary_bytes(spec, setup) + masks
    inputs = 16 * T  # input_ids and labels (int64), alive through the step
    inflight = min(pp - stage, o.microbatches) if pp > 1 else 1

    # autocast's 16-bit copies of the matmul weights: cached until the forward ends, saved by
    # the matmuls until each layer's backward (a layer at a time with full checkpointing).
    copies_layer = [0] * len(layers)
    copies_head = 0
    if autocast:
        # QLoRA's NF4 linears are not autocast ops (bitsandbytes dequantizes them itself)
        lin = 0 if o.qlora else linear_el
        n = max(1, len(layers))
        if lora:  # the adapters' fp32 weights are cast too (and cached: they require grad)
            lin += sum(g.elements for g in trainable if g.part == "layer")
        copies_layer = [2 * lin // n] * len(layers)
        if lora and first and layers and not o.qlora:
            # nothing before the first adapter needs a gradient: the first layer's frozen
            # q/k/v matmuls keep no copy of their weights
            qkv = sum(g.elements for g in groups if g.part == "layer"
                      and g.name.split(".")[0] in ("q_proj", "k_proj", "v_proj", "qkv_proj"))
            copies_layer[0] -= 2 * qkv // n
        if last:
            copies_head = 2 * V * h
    copies_all = sum(copies_layer) + copies_head
    copies_fwd_loss = copies_fwd_mid = copies_all
    if autocast and lora and ckpt == "full" and layers:
        # autocast caches only the casts of tensors that require grad (the adapters'); a
        # checkpointed layer saves nothing, so the frozen base's casts go with each matmul
        adapters = 2 * sum(g.elements for g in trainable if g.part == "layer")
        copies_fwd_loss = adapters + copies_head
        copies_fwd_mid = adapters + (copies_layer[-1] - adapters // len(layers)) + copies_head
    # Full checkpointing discards the forward's saved casts: in backward only the head's copy
    # (saved by the un-checkpointed LM head) and the recomputed layer's live.
    copies_bwd = copies_head + (0 if ckpt == "full" else sum(copies_layer))

    # -- model-state bases -----------------------------------------------------------------
    Wres = sb.weights + sb.gathered + sb.gathered_grad_op
    Ost = sb.master + sb.optimizer
    G = sb.gradients
    buffers = sb.grad_buffers
    accumulating = o.microbatches > 1
    G_prev = G if accumulating else 0

    A_layers = sum(kept)
    A_emb = sum(emb.values())
    A_head = sum(head.values())
    A_all = inflight * (A_layers + A_emb + shared) + A_head + inputs
    # what backward starts with: the masks go with the forward, unless checkpointing keeps
    # them as inputs of the layers it recomputes
    A_bwd = A_all - (0 if ckpt == "full" else inflight * masks)

    logits = T * V * logit_b if last else 0
    upcast = T * V * 4 if (last and logit_b != 4) else 0
    if last and (autocast or lora):
        # The final norm's output is still a local of the model's forward during the loss
        # (under autocast the LM head saved its own 16-bit cast; LoRA's frozen head saved
        # nothing).
        upcast += T * h * residual // sp_div

    # -- forward ------------------------------------------------------------------------------
    # QLoRA: bitsandbytes dequantizes each NF4 weight to 16 bits for its matmul (forward, and
    # again in backward for the input gradient): one layer's largest weight at a time.
    dequant = 2 * max((g.numel for g in groups if g.linear and g.part == "layer"
                       and len(g.shape) == 2), default=0) if o.qlora else 0
    # A checkpointed layer's forward saves nothing: at most its attention's or its MLP's
    # tensors are alive at once, beside the transient.
    fwd_layer_t = max((act.forward_transient + (_ckpt_working_set(act) if ckpt == "full" else 0)
                       for act in acts), default=0) + dequant
    fwd_base = Wres + Ost + G_prev + buffers
    # the DynamicCache's copies that backward does not save live until the output is dropped
    cache_fwd = inflight * sum(act.cache_forward for act in per)
    # (the masks are gone by the loss: the decoder's forward that built them has returned)
    fwd_loss = fwd_base + A_bwd + copies_fwd_loss + upcast + cache_fwd
    fwd_mid = fwd_base + A_all - A_head + copies_fwd_mid - copies_head + fwd_layer_t + cache_fwd
    if fwd_loss + logits >= fwd_mid:
        forward = {"weights": Wres, "optimizer_states": Ost, "gradients": G_prev,
                   "activations": A_bwd + copies_fwd_loss + upcast + cache_fwd,
                   "logits": logits,
                   "comm_buffers": buffers}
    else:
        forward = {"weights": Wres, "optimizer_states": Ost, "gradients": G_prev,
                   "activations": fwd_mid - fwd_base, "logits": 0, "comm_buffers": buffers}

    # -- backward -----------------------------------------------------------------------------
    bwd_base = Wres + Ost + buffers
    loss_grads = 2 * 4 * T * V if last else 0
    best = (bwd_base + G_prev + A_bwd + copies_bwd + loss_grads,
            {"gradients": G_prev, "activations": A_bwd + copies_bwd + loss_grads})
    # Walk the layers backwards: G grows by each layer's gradients, A shrinks.
    g_head_part = _grad_part(parts, "head", sb, P)
    g_embed_part = _grad_part(parts, "embed", sb, P)
    g_layers = G - g_head_part - g_embed_part
    g_layer = g_layers // max(1, len(layers))
    # each layer kind's share of the layers' gradients (a MoE layer's experts outweigh a dense
    # layer's MLP); adapters alone (LoRA) are spread evenly
    if lora or len(kind_list) == 1:
        g_of_kind = [g_layer] * len(kind_list)
    else:
        el = [tensor_elements(layer_tensors(spec, x.moe, o.tp, o.ep)) for x in kind_list]
        total_el = sum(e * n for e, n in zip(el, kind_count, strict=True)) or 1
        g_of_kind = [g_layers * e // total_el for e in el]
    tied_partial = (V * h * (4 if autocast else grad_b)
                    if (last and first and spec.tie_word_embeddings and not lora) else 0)
    g_now = G_prev if accumulating else g_head_part + tied_partial
    a_now = A_bwd - A_head
    c_now = copies_bwd - copies_head
    # Per layer kind: what its backward holds beyond the running total (its transient, and
    # what it recomputes), and what the total drops once it is done (its kept activations).
    # copies_layer is the same for every layer.
    c_layer = copies_layer[-1] if copies_layer else 0
    # the scores' backward comes after the MLP's and o_proj's: their gradients exist by then
    # (and, under autocast, their 16-bit weight copies are gone)
    share = [_late_grad_share(spec, x, o.tp, o.ep) for x in kind_list]

    # RMSNorm's backward (the second norm's, right after the MLP's): four fp32 T x h
    # temporaries beside the MLP's gradients, its saved tensors gone
    norm_bwd = 0 if NORM_STYLES.get(spec.model_type, "llama") == "layernorm" else (
        16 * T * h // sp_div)
    mlp_share = [_mlp_grad_share(spec, x, o.tp, o.ep) for x in kind_list]

    def layer_extras(grads_of_kind: list[int]) -> list[int]:
        """Each kind's backward beyond the running total, given its gradients' bytes."""
        attn_g = [grads_of_kind[k] * share[k] - (c_layer * share[k] if autocast else 0)
                  for k in range(len(kind_list))]
        norm_g = [grads_of_kind[k] * mlp_share[k] - (c_layer * mlp_share[k] if autocast else 0)
                  for k in range(len(kind_list))]
        # QLoRA's dequantized weight (dequant) exists only inside a matmul: the MLP's
        return [max(act.backward_transient + dequant,
                    act.attn_backward + int(attn_g[k]) if act.attn_backward else 0,
                    norm_bwd + int(norm_g[k]) - act.saved.get("mlp", 0)
                    - act.saved.get("moe", 0))
                + (kind_total[k] + (c_layer if autocast else 0) if ckpt == "full"
                             else act.s2 if ckpt == "selective" else 0)
                for k, act in enumerate(acts)]

    extra_of_kind = layer_extras([0 if accumulating else g for g in g_of_kind])
    kept_of_kind = [ckpt_input if ckpt == "full" else kind_total[k] - act.s2
                    if ckpt == "selective" else kind_total[k] for k, act in enumerate(acts)]
    dc = c_layer if ckpt != "full" else 0
    running = bwd_base + g_now + a_now + c_now  # the candidate before the layer's extra
    best_cand, best_g = best[0], None
    for k in reversed(layer_kind):
        cand = running + extra_of_kind[k]
        if cand > best_cand:
            best_cand, best_g = cand, g_now
        dg = 0 if accumulating else g_of_kind[k]
        g_now += dg
        running += dg - inflight * kept_of_kind[k] - dc
    if best_g is not None:
        best = (best_cand, {"gradients": best_g, "activations": best_cand - bwd_base - best_g})
    # The end: every gradient, and the embedding's: tied tables sum two partial gradients
    # (the LM head's and the embedding's) into a third tensor.
    # The embedding's backward also holds the gradient of its output (T h, residual dtype).
    emb_grad = V * h * grad_b // (N if (o.zero >= 2 or o.fsdp) else 1) if first and not lora else 0
    emb_out_grad = T * residual * h // sp_div if first and not lora else 0
    tied_extra = emb_out_grad
    if first and not lora and spec.tie_word_embeddings and pp == 1:
        g_tied = grad_b if not autocast else 4
        tied_extra = max(2 * V * h * g_tied + (V * h * grad_b if accumulating else 0),
                         V * h * g_tied + emb_out_grad)
    elif first and not lora and accumulating:
        tied_extra = emb_grad + emb_out_grad
    end = bwd_base + G + inputs + inflight * (shared * 0) + tied_extra
    if end > best[0]:
        best = (end, {"gradients": G, "activations": inputs + tied_extra})
    backward = {"weights": Wres, "optimizer_states": Ost, "comm_buffers": buffers, **best[1]}
    if o.fsdp is not None and o.dp > 1:
        n_layers = max(1, len(layers))
        grad_unit = padded_layers // n_layers  # a layer's elements with gradients
        # a layer's parameters, all-gathered: with LoRA the frozen base and its adapters
        unit = (fsdp_padded_elements(tuple(g for g in groups + trainable if g.part == "layer"),
                                     N) // n_layers if lora else grad_unit)
        if o.qlora:  # the NF4 base is all-gathered as stored (packed values and scales)
            base = tuple(g for g in groups if g.part == "layer")
            unit = (-(-_weight_bytes(base, recipe, True) // (n_layers * xin.compute_bytes))
                    + grad_unit)
        # a layer's gradients are unsharded (c U) until its reduce-scatter
        fsdp_extra = layer_extras([xin.compute_bytes * grad_unit] * len(kind_list))
        forward, backward = _fsdp_timeline(_FsdpStep(
            sharded=sb.weights, states=Ost, prev_grads=G_prev,
            c=xin.compute_bytes, r=recipe.grad_bytes, N=N,
            root=xin.root_elements if (first or last) else 0,
            head=parts["head"] if last else 0, emb=parts["embed"] if first else 0,
            tied=spec.tie_word_embeddings and first and last,
            unit=unit, grad_unit=grad_unit, grad_op=o.fsdp == "grad-op",
            root_grad=0 if lora else xin.root_elements if (first or last) else 0,
            kept=kept, extra=[fsdp_extra[k] for k in layer_kind],
            acts_all=A_all, acts_bwd=A_bwd, acts_head=A_head, inputs=inputs,
            fwd_layer=fwd_layer_t, fwd_loss=A_bwd + upcast + cache_fwd, logits=logits,
            loss_grads=loss_grads, emb_out_grad=T * residual * h // sp_div if first else 0))

    # -- optimizer step ----------------------------------------------------------------------
    optimizer = {"weights": sb.weights, "optimizer_states": Ost,
                 "gradients": sb.step_gradients, "temporaries": sb.temporaries,
                 "activations": inputs, "comm_buffers": 0 if o.fsdp else buffers}
    if recipe.master_bytes and not lora and o.zero == 0 and o.fsdp is None and pp == 1:
        # bf16-master casts each 16-bit gradient to its master's fp32 one and frees it, in
        # parameter order: at tensor i the fp32 gradients of tensors <= i meet the 16-bit ones
        # of tensors >= i, 2 G16 + g_i - (16-bit bytes after i); largest at the embedding
        # (first), at the last layer's big tensors or the LM head. With few step temporaries
        # (SGD, fused) or a large vocabulary that moment outweighs the step.
        gb = recipe.grad_bytes
        cast = sb.step_gradients + _master_cast_extra(spec, layers[-1], o.tp, o.ep, V,
                                                      sb.gradients, gb)
        if cast > sb.step_gradients + sb.temporaries:
            optimizer.update(gradients=cast, temporaries=0)

    kinds = list(zip(acts, kind_count, strict=True))
    # the derivations are formatted only when read (Estimate.terms is LazyTerms)
    terms = partial(_terms, c, stage, recipe, opt, sb, P, xin.weight_bytes, per, kinds, kept,
                    emb, head, shared, copies_all,
                    logits, upcast, loss_grads, tied_extra, T, V, inflight, setup)
    return {"phases": (Phase("forward", _clean(forward)), Phase("backward", _clean(backward)),
                       Phase("optimizer", _clean(optimizer))),
            "terms": terms, "host": sb.host, "shards": N, "notes": sb.notes,
            "trainable": P, "stage": stage, "layers": len(layers)}


def _master_cast_extra(spec: ModelSpec, last_layer: Any, tp: int, ep: int, V: int,
                       g16: int, gb: int) -> int:
    """The most bf16-master's gradient casts hold beyond every fp32 gradient (see the
    optimizer phase): max over tensors i of g_i - (16-bit bytes after i), with the embedding
    first (2 g_0 - G16), then the last layer's tensors (its norms last, as transformers
    registers them), the final norm and an untied LM head."""
    h = spec.hidden_size
    groups = layer_tensors(spec, last_layer.moe, tp, ep)
    order = [g for g in groups if not g.name.startswith("norms")]
    order += [g for g in groups if g.name.startswith("norms")]
    seq = [g.numel * gb for g in order for _ in range(g.count)]
    seq.append(h * gb * (2 if spec.norm_bias else 1))  # the final norm
    if not spec.tie_word_embeddings:
        seq.append(V * h * gb)
    best = 2 * V * h * gb - g16  # the embedding, first
    after = 0
    for g in reversed(seq):
        best = max(best, g - after)
        after += g
    return best


def _elements_named(spec: ModelSpec, layer: Any, tp: int, ep: int,
                    names: tuple[str, ...]) -> tuple[int, int]:
    """(elements of the layer's tensors whose module is one of ``names``, all its elements)."""
    groups = layer_tensors(spec, layer.moe, tp, ep)
    named = sum(g.elements for g in groups if g.name.split(".")[0] in names)
    return named, tensor_elements(groups) or 1


@lru_cache(maxsize=4096)
def _late_grad_share(spec: ModelSpec, layer: Any, tp: int, ep: int) -> float:
    """The share of a layer's parameters whose gradients its backward makes before it reaches
    the attention scores: everything but the q/k/v projections, their norms and the input
    norm (one of the layer's two norms)."""
    early, total = _elements_named(spec, layer, tp, ep, (
        "q_proj", "k_proj", "v_proj", "qkv_proj", "q_norm", "k_norm", "q_a_proj",
        "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj"))
    early += spec.hidden_size * (2 if spec.norm_bias else 1)  # the input norm
    return max(0.0, 1 - early / total)


def _ckpt_working_set(act: Any) -> int:
    """What a checkpointed layer's forward (which saves nothing) holds beside its transient:
    the larger of its attention block (with the norms) and its MLP block."""
    parts = act.saved
    return max(parts.get("norms", 0) + parts.get("attention", 0),
               parts.get("mlp", 0) + parts.get("moe", 0) + parts.get("dropout_masks", 0))


@lru_cache(maxsize=4096)
def _mlp_grad_share(spec: ModelSpec, layer: Any, tp: int, ep: int) -> float:
    """The share of a layer's parameters in its MLP (or routed and shared experts, router):
    the gradients its backward has made when it reaches the second norm."""
    mlp, total = _elements_named(spec, layer, tp, ep, (
        "mlp", "experts", "router", "shared_expert", "shared_expert_gate"))
    return mlp / total


def _use_cache(config: Mapping[str, Any] | None, o: TrainingOptions) -> bool:
    """Whether the training forward builds a ``DynamicCache``: transformers leaves
    ``use_cache`` at the config's default (True) as ``Trainer`` does, and turns it off under
    its gradient checkpointing (memfit's ``selective`` is Megatron-style: no cache either)."""
    if o.checkpointing != "none":
        return False
    return (config or {}).get("use_cache", True) is not False


def _state_inputs(spec: ModelSpec, groups: tuple[TensorGroup, ...], recipe: Recipe, opt: Any,
                  o: TrainingOptions, lora: bool, state_b: int, first: bool, n_layers: int,
                  adapter_bytes: int = 4
                  ) -> tuple[StateInputs, tuple[TensorGroup, ...], int, dict[str, int]]:
    """The sums over one rank's tensors that the model states need (memoised per layout)."""
    trainable = _adapters(groups, o.lora_rank or 0) if lora else groups
    P = tensor_elements(trainable)
    W = _weight_bytes(groups, recipe, o.qlora) + (adapter_bytes * P if lora else 0)
    if first:
        # rotary inv_freq etc.: fp32 buffers; Gemma's embed_scale in the weights' dtype
        W += (4 * (buffer_elements(spec) - spec.extra_buffers)
              + recipe.weight_bytes * spec.extra_buffers)
    # tensors the model keeps in fp32 (DeepSeek's router) get fp32 optimizer state
    f32 = tuple(g for g in trainable if g.fp32) if state_b < 4 else ()
    rest = tuple(g for g in trainable if not g.fp32) if f32 else trainable
    states_full = optimizer_state_bytes(rest, opt, state_b)
    temps_full = optimizer_temporary_bytes(rest, opt, o.optimizer_impl, state_b)
    if f32 and not opt.eight_bit:
        states_full += optimizer_state_bytes(f32, opt, 4)
        t32 = optimizer_temporary_bytes(f32, opt, o.optimizer_impl, 4)
        temps_full = (temps_full + t32 if o.optimizer_impl == "foreach"
                      else max(temps_full, t32))
    if recipe.master_bytes and not lora and o.optimizer_impl != "fused" and not opt.eight_bit:
        # The optimizer steps the fp32 masters: its temporaries are fp32.
        temps_full = optimizer_temporary_bytes(trainable, opt, o.optimizer_impl, 4)
    steps = optimizer_host_step_bytes(trainable, opt, o.optimizer_impl)
    largest = max((g.numel for g in groups), default=0)
    persistent = sum(g.elements for g in groups
                     if g.numel < DEEPSPEED_DEFAULTS.stage3_param_persistence_threshold)
    per_layer = tuple(g for g in groups if g.part == "layer")
    layer_el = tensor_elements(per_layer) // max(1, n_layers)
    root_el = tensor_elements(tuple(g for g in groups if g.part != "layer"))
    xin = StateInputs(weight_bytes=W, trainable=P, compute_bytes=recipe.compute_bytes,
                      state_bytes=states_full, temporaries=temps_full, step_counters=steps,
                      largest_module=largest, persistent=persistent, layer_elements=layer_el,
                      root_elements=root_el, layers=n_layers,
                      fp32_trainable=0 if lora else sum(g.elements for g in trainable
                                                        if g.fp32))
    parts = {part: sum(g.elements for g in trainable if g.part == part)
             for part in ("embed", "head")}
    return xin, trainable, _linear_elements(per_layer), parts


@dataclass(frozen=True)
class _FsdpStep:
    """What :func:`_fsdp_timeline` needs of one rank (bytes, unless said elements)."""

    sharded: int  # the rank's parameter shards
    states: int  # optimizer state (and masters) shards
    prev_grads: int  # gradient shards held from earlier micro-batches
    c: int  # unsharded parameter dtype bytes (MixedPrecisionPolicy.param_dtype)
    r: int  # gradient reduce dtype bytes (reduce_dtype)
    N: int  # shards
    root: int  # elements of the root unit (embeddings, final norm, LM head)
    head: int  # elements of an untied LM head
    emb: int  # elements of the embedding
    tied: bool
    unit: int  # elements of one decoder layer (one fully_shard unit)
    grad_unit: int  # elements of one decoder layer with gradients (LoRA: its adapters)
    root_grad: int  # elements of the root with gradients (LoRA: none)
    grad_op: bool  # reshard_after_forward=False
    kept: list[int]  # each layer's activations kept for backward
    extra: list[int]  # each layer's backward transient beyond its kept activations
    acts_all: int
    acts_bwd: int
    acts_head: int
    inputs: int
    fwd_layer: int  # the largest layer's forward transient
    fwd_loss: int  # activations at the loss (before the logits)
    logits: int
    loss_grads: int
    emb_out_grad: int


def _fsdp_timeline(f: _FsdpStep) -> tuple[dict[str, int], dict[str, int]]:
    """Forward and backward peaks of one FSDP2 rank, moment by moment.

    FSDP2 (``fully_shard`` per decoder layer, then the root; read off
    ``torch/distributed/fsdp/_fully_shard/`` and checked op by op on the tracer) all-gathers a
    unit into a flat buffer (c U) and copies it out into the unsharded parameters (c U); the
    flat buffer is freed only when the next all-gather's copy-out is done, so three units are
    alive at a copy-out. The root's parameters (c R) stay unsharded through the forward and
    again through the backward. Backward prefetches the previous layer's all-gather; each
    layer's 16-bit gradients (c U) go into a flat fp32 reduce-scatter input (r U) that lives
    until the next layer's reduce-scatter; its output (r U / N) is the gradient shard. The
    root reduce-scatters last: its 16-bit gradients (c R) and its flat input (r R) at once.
    ``grad-op`` keeps every layer unsharded from its all-gather to its own reduce-scatter.
    """
    cU, cR = f.c * f.unit, f.c * f.root
    cG, rG = f.c * f.grad_unit, f.r * f.grad_unit  # a layer's 16-bit gradients, flat input
    L = len(f.kept)
    done = 0 if f.prev_grads else 1  # accumulating micro-batches add to existing shards
    held = (lambda i: i * cU) if f.grad_op else (lambda i: 0)  # grad-op: layers kept whole

    def moment(params: int, flats: int, grads: int, acts: int, logits: int = 0
               ) -> tuple[int, int, int, int, int, int]:
        return (params + flats + grads + acts + logits, params, flats, grads, acts, logits)

    def phase(m: tuple[int, int, int, int, int, int]) -> dict[str, int]:
        return {"weights": f.sharded + m[1], "optimizer_states": f.states,
                "gradients": m[3], "comm_buffers": m[2], "activations": m[4], "logits": m[5]}

    # -- forward: the root's parameters throughout; each layer's all-gather and compute
    p0 = f.prev_grads
    above = f.acts_all - f.acts_head
    forward = phase(max(
        moment(cR + cU, cR + cU, p0, f.inputs),  # layer 0's copy-out beside the root's flat
        moment(cR + held(L - 1) + cU, 2 * cU, p0, above - (f.kept[-1] if L else 0)),
        moment(cR + held(L - 1) + cU, cU, p0, above + f.fwd_layer),
        moment(cR + held(L), cU, p0, f.fwd_loss, f.logits),  # the loss; the last flat buffer
    ))
    # -- backward
    whole = held(L)  # grad-op: every layer still unsharded
    # full: the root was resharded when the forward ended and is gathered again
    cands = [moment(cR + whole, 0 if f.grad_op else cR, p0, f.acts_bwd),
             moment(cR + whole, 0 if f.grad_op else cU, p0, f.acts_bwd + f.loss_grads)]
    # the LM head's 16-bit gradient (tied: the shared table's first partial) until the root's
    # turn
    head_grad = f.c * (f.emb if f.tied else f.head)
    g = p0 + head_grad
    a = f.acts_bwd - f.acts_head
    rs_prev = 0
    own = 0 if f.grad_op else cU  # a layer's parameters, gathered again for its backward
    shard = done * -(-rG // f.N)
    best = max(cands)
    # Along a run of identical layers each moment changes linearly (the shards grow, the
    # activations shrink), so its largest is at the run's first or last layer: only those
    # (and the walk's two ends, where the prefetch and the previous flat buffer change) are
    # evaluated, and only a new largest moment is kept: estimates stay fast.
    ends = {0, 1, L - 2, L - 1} | {i for i in range(1, L) if
                                   (f.kept[i], f.extra[i]) != (f.kept[i - 1], f.extra[i - 1])}
    ends |= {i - 1 for i in ends if i > 0}
    for i in reversed(range(L)):
        if i not in ends:
            a -= f.kept[i]
            whole -= cU if f.grad_op else 0
            g += shard
            continue
        prefetch = cU if (i and not f.grad_op) else 0  # layer i-1's all-gather
        p, fl = cR + whole + own, prefetch + rs_prev
        for m in ((p, fl, g, a + f.extra[i]),  # the layer's own backward peak
                  # done: all its 16-bit gradients, its parameters not yet resharded
                  (p, fl, g + cG, a - f.kept[i]),
                  # its reduce-scatter: the gradients copied into the flat input (the
                  # previous one freed), then with the shard made, layer i-1's copy-out
                  (p - own - (cU if f.grad_op else 0), rG + prefetch, g + cG, a - f.kept[i]),
                  (p - own - (cU if f.grad_op else 0) + prefetch, rG + prefetch, g + shard,
                   a - f.kept[i])):
            total = m[0] + m[1] + m[2] + m[3]
            if total > best[0]:
                best = (total, *m, 0)
        a -= f.kept[i]
        whole -= cU if f.grad_op else 0
        g += shard
        rs_prev = rG
    cands.append(best)
    # the embedding's backward (beside the root's parameters and the LM head's gradient),
    # then the root's reduce-scatter: its 16-bit gradients and their flat fp32 input
    emb_grads = f.c * f.emb * (2 if f.tied else 1)
    cands.append(moment(cR, rs_prev, g + emb_grads, a + f.emb_out_grad + f.inputs))
    if f.root_grad:
        rR = f.r * f.root_grad
        cands.append(moment(0, rR, g - head_grad + f.c * f.root_grad, f.inputs))
        # (its output, r R / N, is allocated once the embedding's 16-bit gradient is freed)
        cands.append(moment(0, rR, g - head_grad + f.c * (f.root_grad - f.emb) + -(-rR // f.N),
                            f.inputs))
    return forward, phase(max(cands))


def _grad_part(parts: dict[str, int], part: str, sb: Any, P: int) -> int:
    """Gradient bytes (as held, sharded or not) of the parameters of one ``part`` ("embed",
    "head") on this rank."""
    if P == 0:
        return 0
    return sb.gradients * parts[part] // P


def _clean(components: dict[str, int]) -> dict[str, int]:
    return {k: int(v) for k, v in components.items() if v or k in (
        "weights", "gradients", "optimizer_states", "activations")}


def _terms(c: _Ctx, stage: int, recipe: Recipe, opt: Any, sb: Any, P: int, W: int,
           per: list[Any], kinds: list[tuple[Any, int]], kept: list[int],
           emb: dict[str, int], head: dict[str, int],
           shared: int, copies: int, logits: int, upcast: int, loss_grads: int,
           tied_extra: int, T: int, V: int, inflight: int, setup: ActivationSetup) -> list[Term]:
    o, spec = c.o, c.spec
    src_states = "ZeRO (Rajbhandari et al. 2020) sec. 3.1; torch/optim; memory/model_states.py"
    N = sb.shards
    t = [
        Term("weights", sb.weights, "W / N" if N > 1 else "P_all * b_w",
             f"{W} / {N}" if N > 1 else f"{W}", src_states,
             "QLoRA: base linears NF4 with double quantization, the rest fp32" if o.qlora
             else recipe.convention),
        Term("gradients", sb.gradients, "P * b_g / N" if N > 1 else "P * b_g",
             f"{P} * {recipe.grad_bytes if o.lora_rank is None else c.lora_bytes}"
             + (f" / {N}" if N > 1 else ""),
             src_states),
        Term("master_weights", sb.master, "P * b_m / N", f"{P} * {recipe.master_bytes} / {N}",
             src_states),
        Term("optimizer_state", sb.optimizer, _state_formula(opt), f"P={P}, N={N}",
             opt.source),
        Term("optimizer_temporaries", sb.temporaries,
             {"foreach": "P * b_s (one state copied)", "fused": "0",
              "forloop": "2 * max_tensor * b_s"}.get(o.optimizer_impl, ""),
             f"impl={o.optimizer_impl}", opt.source),
    ]
    if c.o.fsdp is not None and sb.gathered:
        t.append(Term("gathered_params", sb.gathered + sb.gathered_grad_op,
                      "c R (root) + 2 c U (a layer's flat all-gather buffer and parameters; "
                      "3 c U at a copy-out)" + (" + L c U (grad-op)" if sb.gathered_grad_op
                                                else ""),
                      f"{sb.gathered} + {sb.gathered_grad_op}",
                      "torch FSDP2 _fsdp_param_group.py / _fsdp_collectives.py; checked op by "
                      "op on the tracer (memfit.training._fsdp_timeline)"))
    elif sb.gathered or sb.gathered_grad_op:
        t.append(Term("gathered_params", sb.gathered + sb.gathered_grad_op,
                      "unsharded working set (16-bit)", f"{sb.gathered} + {sb.gathered_grad_op}",
                      "DeepSpeed stage3.py (prefetch, persistence); torch FSDP2 fully_shard"))
    if c.o.fsdp is not None and sb.grad_buffers:
        # LoRA: only the adapters (all of them in the layers) are reduce-scattered
        rs = (P // max(1, len(per)) * recipe.grad_bytes if c.o.lora_rank is not None
              else sb.grad_buffers)
        t.append(Term("comm_buffers", rs, "r U (a layer's flat reduce-scatter input of its "
                      "parameters with gradients, alive until the next layer's)", f"{rs}",
                      "torch FSDP2 foreach_reduce (_fsdp_collectives.py)"))
    elif sb.grad_buffers:
        t.append(Term("comm_buffers", sb.grad_buffers, "bucket elements * b_g",
                      f"{sb.grad_buffers}", "DeepSpeed reduce_bucket_size 5e8; torch DDP buckets"))
    L = len(per)
    if L:
        # by layer kind in order of first appearance: the same parts in the same order as
        # a walk over every layer
        parts: dict[str, int] = {}
        for act, n in kinds:
            for k, v in act.saved.items():
                parts[k] = parts.get(k, 0) + v * n
        for k, v in parts.items():
            t.append(Term(f"activations/{k}", v * inflight if o.checkpointing == "none" else 0,
                          "sum over layers of T * (per-token bytes)",
                          f"T={T}, layers={L}, micro-batches in flight={inflight}",
                          "transformers modeling_*.py saved tensors; memory/activations.py"))
        t.append(Term("activations/layers_kept", sum(kept) * inflight,
                      {"none": "sum of saved", "full": "L * T * b_r * h (layer inputs)",
                       "selective": "sum of saved minus the S x S part"}[o.checkpointing],
                      f"{sum(kept)} * {inflight}", "Korthikanti et al. 2022 (recompute)"))
        k = korthikanti_per_layer(spec, o.seq // o.cp, o.batch, o.tp, o.sp, o.checkpointing)
        t.append(Term("activations/korthikanti_check", k, "s*b*h*(34 + 5*a*s/h) per layer",
                      f"{o.seq // o.cp}*{o.batch}*{spec.hidden_size}*(34 + 5*{spec.num_heads}"
                      f"*{o.seq // o.cp}/{spec.hidden_size})",
                      "Korthikanti et al. 2022, eq. 1 (GPT, 16-bit, no flash attention)",
                      "cross-check only; memfit counts the real saved tensors "
                      f"({per[0].total} for layer 0)"))
    for k, v in {**emb, **head}.items():
        t.append(Term(f"activations/{k}", v, "T * bytes", f"T={T}",
                      "transformers ForCausalLMLoss (fp32 upcast + log_softmax)"))
    if shared:
        t.append(Term("activations/rotary_and_masks", shared, "2 S d_rope b_r + masks",
                      f"{shared}", "transformers rotary embedding / masking_utils"))
    if copies:
        t.append(Term("autocast_weight_copies", copies, "2 * (matmul weights)",
                      f"{copies}", "torch.autocast cast cache (leaf weights, cleared at exit)"))
    if logits or upcast:
        t.append(Term("logits", logits + upcast, "T * V * (b + 4)",
                      f"{T} * {V} * ...", "transformers ForCausalLMLoss: logits.float()"))
    if loss_grads:
        t.append(Term("loss_gradients", loss_grads, "2 * 4 * T * V", f"2 * 4 * {T} * {V}",
                      "nll_loss / log_softmax backward (fp32)"))
    if tied_extra:
        t.append(Term("backward_end_extra", tied_extra,
                      "T * h * b_r (the embedding output's gradient); tied tables: max(2 * V * h "
                      "* b_g, V * h * b_g + T * h * b_r)", f"{tied_extra}",
                      "embedding backward; autograd InputBuffer: two partial gradients summed"))
    return t


def _state_formula(opt: Any) -> str:
    if opt.eight_bit:
        return "2 * P + 8 * ceil(P_t / 2048) per tensor (fp32 under 4096 elements)"
    if opt.factored:
        return "sum over matrices (rows + cols) * b_s + vectors * b_s"
    return f"{opt.states} * P * b_s / N"


def _runtime(o: TrainingOptions, recipe: Recipe) -> tuple[Recipe, str]:
    """How the recipe runs: autocast (plain PyTorch), DeepSpeed's or FSDP2's mixed precision.

    With ``--zero`` the mixed recipes are DeepSpeed's ``bf16``/``fp16`` modes: 16-bit weights
    and gradients, fp32 master and state (2 + 2 + 12). With ``--fsdp`` they are FSDP2's
    ``MixedPrecisionPolicy(param_dtype=16-bit, reduce_dtype=fp32)`` on fp32 sharded params:
    no autocast, 16-bit compute everywhere (contract).
    """
    if recipe.autocast and o.zero:
        r = replace(recipe, weight_bytes=2, grad_bytes=2, master_bytes=4, state_bytes=4,
                    step_grad_bytes=4, autocast=False,
                    convention="DeepSpeed mixed precision: 2 + 2 + 12 (ZeRO paper)")
        return r, "deepspeed"
    if recipe.autocast and o.fsdp:
        return replace(recipe, autocast=False,
                       convention="FSDP2 MixedPrecisionPolicy: fp32 sharded params, grads and "
                                  "state (16 bytes/param / N), 16-bit unsharded compute copies"
                       ), "fsdp"
    if recipe.autocast:
        return recipe, "autocast"
    return recipe, "fsdp" if o.fsdp else ("deepspeed" if o.zero else "plain")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    extra = {k: options.pop(k) for k in list(options) if k in _API_OPTIONS}
    return options, extra


def _estimate(spec: ModelSpec, config: Mapping[str, Any] | None, o: TrainingOptions,
              extra: Mapping[str, Any]) -> Estimate:
    o, seq_note = default_within(o, "seq", spec.learned_positions, 0,
                                 "the learned position table (n_positions)")
    plan = _validate(spec, o)
    recipe = get_recipe(o.precision, extra.get("states_convention"))
    recipe, runtime = _runtime(o, recipe)
    gpn = extra.get("gpus_per_node", 8)
    if not isinstance(gpn, int) or isinstance(gpn, bool) or gpn < 1:
        raise MemfitError.bad_value("gpus-per-node", gpn, "a positive integer")
    attn = "eager" if (o.attn == "sdpa" and spec.model_type in NO_SDPA) else o.attn
    lora_dtype = o.lora_dtype or "fp32"
    if o.lora_dtype is not None and o.lora_rank is None:
        raise MemfitError.bad_value("lora-dtype", lora_dtype, "only with --lora-rank or --qlora")
    c = _Ctx(spec, config, o, recipe, runtime, gpn, attn, 4 if lora_dtype == "fp32" else 2)
    counts = stage_layers(spec.num_layers, o.pp)
    stages = [0] if o.pp == 1 else sorted({0, o.pp - 1})
    results = [_stage_estimate(c, s, counts) for s in stages]
    best = max(results, key=lambda r: max(p.peak_bytes for p in r["phases"]))
    peak = max(p.peak_bytes for p in best["phases"])
    overheads = overhead_terms(peak, world_size=plan.world_size, mode="train")
    gpu_name = gpu_bytes = None
    if o.gpu is not None:
        from .hardware import get_gpu

        g = get_gpu(o.gpu)
        gpu_name, gpu_bytes = g.name, g.usable_bytes
    assumptions = {
        "precision_recipe": recipe.name,
        "model_states_convention": recipe.convention,
        "bytes_per_param": {"weights": recipe.weight_bytes, "gradients": recipe.grad_bytes,
                            "master": recipe.master_bytes, "optimizer_state_element":
                            recipe.state_bytes, "extra_gradient_copy": recipe.extra_grad_bytes},
        "runtime": runtime,
        "optimizer": f"{o.optimizer} ({o.optimizer_impl})",
        "attention": ("sdpa: flash/memory-efficient kernels, (B, a, S) fp32 log-sum-exp, no "
                      "S x S" if attn == "sdpa" else "eager: fp32 softmax of B x a x S x S"
                      + (" (the family cannot run SDPA: transformers falls back to eager)"
                         if attn != o.attn else "")),
        "checkpointing": o.checkpointing,
        "steady_state": "optimizer state exists; zero_grad(set_to_none=True)",
        "most_loaded_stage": best["stage"],
        "layers_on_rank": best["layers"],
        "shards": best["shards"],
        "trainable_params_on_rank": best["trainable"],
        "notes": list(best["notes"]) + ([seq_note] if seq_note else []),
    }
    if o.pp > 1:
        assumptions["pipeline"] = ("1F1B: the first stage holds min(pp, micro-batches) "
                                   "micro-batches of activations; the last the LM head and loss")
    if o.lora_rank is not None:
        assumptions["lora"] = (f"rank {o.lora_rank} on {', '.join(LORA_TARGETS)}; adapters, their "
                               "gradients and optimizer state in fp32")
    return Estimate(mode="train", model=spec.name, options=_options_dict(o, extra),
                    phases=best["phases"], overheads={t.name: t.bytes for t in overheads},
                    terms=LazyTerms(lambda: (*best["terms"](), *overheads)),
                    assumptions=assumptions,
                    gpu=gpu_name, gpu_memory_bytes=gpu_bytes, host_bytes=best["host"],
                    extras={"world_size": plan.world_size})


def _options_dict(o: TrainingOptions, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: getattr(o, k) for k in _OPTION_NAMES},
            **{k: v for k, v in extra.items() if v is not None}}


_OPTION_NAMES = tuple(f.name for f in fields(TrainingOptions))

def _memo(spec: ModelSpec) -> dict[Any, Any]:
    """Per-model memo (tensor lists, layer activations): the spec's table of
    :func:`memfit.memory.weights.memo_table`, keyed by the spec object's identity so a call
    does not re-hash the whole ModelSpec, and bounded."""
    return memo_table(spec)


def train(model: ModelLike, **options: Any) -> Estimate:
    """Per-GPU memory of one training step of ``model`` (see the module docstring).

    ``options`` are :class:`~memfit.workload.TrainingOptions`' fields (the CLI's names with
    underscores), plus ``states_convention`` ("zero-16", "megatron-18", "mtnlg-20", with
    ``precision="bf16-master"``) and ``gpus_per_node`` (HSDP shard group, default 8).
    """
    spec, config = resolve_model(model)
    opts, extra = _split_options(dict(options))
    o = make_options(TrainingOptions, **opts)
    return _estimate(spec, config, o, extra)


# ---------------------------------------------------------------------------------------
# Inverse questions
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutFit:
    """One parallel layout that fits, with its peak and headroom."""

    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    zero: int
    fsdp: str | None
    checkpointing: str
    offload: str
    peak_bytes: int
    total_bytes: int
    headroom_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class FitResult:
    """What fits on ``gpus`` x ``gpu``: the largest micro-batch and longest sequence for the
    given layout (None when even 1 does not fit), and the layouts that fit, best first."""

    model: str
    gpu: str
    gpus: int
    gpu_memory_bytes: int
    max_batch: int | None
    max_seq: int | None
    estimate: Estimate | None  # at max_batch
    layouts: tuple[LayoutFit, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()
    """What the sweep left out (a GPU count with too many layouts to try them all)."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "gpu": self.gpu, "gpus": self.gpus,
                "gpu_memory_bytes": self.gpu_memory_bytes, "max_batch": self.max_batch,
                "max_seq": self.max_seq,
                "estimate": self.estimate.to_dict() if self.estimate else None,
                "layouts": [x.to_dict() for x in self.layouts], "notes": list(self.notes)}


#: Layouts (DP x TP x PP x CP) a fit sweep tries, and estimates it makes for them: 720,720
#: GPUs have 89,600 ordered factorizations (times the ZeRO, checkpointing, offload and EP
#: choices); the ones tried are the likeliest (small TP, PP, CP first) and the result says
#: when the sweep stopped short.
MAX_FACTORIZATIONS = 256
MAX_LAYOUT_ESTIMATES = 4_000


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _factorizations(n: int, k: int) -> list[tuple[int, ...]]:
    """Every ordered ``k``-tuple of positive integers whose product is ``n``."""
    if k == 1:
        return [(n,)]
    return [(d, *rest) for d in _divisors(n) for rest in _factorizations(n // d, k - 1)]


def _likely_layouts(n: int) -> tuple[list[tuple[int, ...]], int]:
    """The DP x TP x PP x CP factorizations of ``n`` to try, likeliest first (no CP, TP within
    a node of 8, then the smallest TP x PP x CP), at most :data:`MAX_FACTORIZATIONS`; and how
    many there are in all."""
    every = _factorizations(n, 4)
    every.sort(key=lambda f: (f[3] > 1, f[1] > 8, f[1] * f[2] * f[3], f[2], f[1]))
    return every[:MAX_FACTORIZATIONS], len(every)


def fit_train(model: ModelLike, gpu: str, gpus: int = 1, *, max_layouts: int = 20,
              **options: Any) -> FitResult:
    """The largest micro-batch and longest sequence that fit the given layout on ``gpu``
    (exact: the answer fits, one more does not), and a ranked list of layouts of ``gpus``
    GPUs (DP x TP x PP x CP x EP, ZeRO stage or FSDP, checkpointing, offload) that fit at the
    given batch and sequence, ranked by fewest compromises (no offload, no recomputation),
    then most headroom."""
    from .hardware import get_gpu

    from .inference import MAX_GPUS

    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_GPUS:
        raise MemfitError.bad_value("gpus", gpus, f"an integer in [1, {MAX_GPUS}]")
    spec, config = resolve_model(model)
    g = get_gpu(gpu)
    opts, extra = _split_options(dict(options))
    opts["gpu"] = g.name
    if "dp" not in opts and gpus > 1 and all(k not in opts for k in ("tp", "pp", "cp")):
        opts["dp"] = gpus
    base = make_options(TrainingOptions, **opts)
    if base.world_size != gpus:
        raise MemfitError.bad_value("gpus", gpus, f"dp*tp*pp*cp = {base.world_size} for the "
                                    "given layout (or leave the layout out)")

    def fits(o: TrainingOptions) -> bool:
        try:
            return bool(_estimate(spec, config, o, extra).fits)
        except MemfitError:
            return False

    def with_(o: TrainingOptions, **kw: Any) -> TrainingOptions:
        return replace(o, **kw)

    max_batch = largest_true(lambda n: fits(with_(base, batch=n)), 1, MAX_COUNT)
    step = base.cp
    max_seq_units = largest_true(lambda n: fits(with_(base, seq=n * step)), 1, MAX_COUNT // step)
    max_seq = max_seq_units * step if max_seq_units else None
    est = _estimate(spec, config, with_(base, batch=max_batch), extra) if max_batch else None

    layouts: list[LayoutFit] = []
    moe = spec.moe is not None
    tried, total = _likely_layouts(gpus)
    budget = MAX_LAYOUT_ESTIMATES
    for dp, tp, pp, cp in tried:
        if budget <= 0:
            break
        eps = (_divisors(dp * cp) if moe else [1])[:budget // 9 + 1]
        shardings: list[tuple[int, str | None]] = [(0, None)]
        if dp > 1:
            shardings += [(1, None), (2, None), (3, None), (0, "full"), (0, "grad-op")]
        for ep, (zero, fsdp), ckpt, off in itertools.product(
                eps, shardings, ("none", "selective", "full"), ("none", "optimizer", "params")):
            if off != "none" and not zero and fsdp is None:
                continue
            if off == "params" and zero in (1, 2):
                continue
            budget -= 1
            try:
                o = with_(base, dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, fsdp=fsdp,
                          checkpointing=ckpt, offload=off, sp=base.sp and tp > 1,
                          microbatches=max(base.microbatches, pp))
                e = _estimate(spec, config, o, extra)
            except MemfitError:
                continue
            if e.fits:
                layouts.append(LayoutFit(dp, tp, pp, cp, ep, zero, fsdp, ckpt, off,
                                         e.peak_bytes, e.total_bytes, e.headroom_bytes or 0))
    rank_off = {"none": 0, "optimizer": 1, "params": 2}
    rank_ck = {"none": 0, "selective": 1, "full": 2}
    layouts.sort(key=lambda x: (rank_off[x.offload], rank_ck[x.checkpointing],
                                x.tp * x.pp * x.cp > 1, -x.headroom_bytes))
    notes = []
    if total > len(tried) or budget <= 0:
        notes.append(f"layouts: {gpus} GPUs have {total:,} DP x TP x PP x CP splits; the sweep "
                     f"tried the {len(tried):,} likeliest (small TP, PP, CP first) within "
                     f"{MAX_LAYOUT_ESTIMATES:,} estimates")
    return FitResult(model=spec.name, gpu=g.name, gpus=gpus, gpu_memory_bytes=g.usable_bytes,
                     max_batch=max_batch, max_seq=max_seq, estimate=est,
                     layouts=tuple(layouts[:max_layouts]), notes=tuple(notes))
