"""The backward phase as events (unsharded parameters; FSDP2 in :mod:`memfit.step.fsdp`).

It opens with the loss' two fp32 B x S x V gradients, then walks the layers backwards: each
layer's backward holds a transient (its own working set, what it recomputes under
checkpointing) beside the running total, then its kept activations go and its gradients
arrive. It ends with every gradient, the embedding output's gradient and, for tied
embeddings, the two partial gradients of the shared table being summed (autograd's
``InputBuffer``).
"""

from __future__ import annotations

from ..memory.activations import NORM_STYLES
from .context import Stage
from .events import ACTS, BUFFERS, GRADS, LOGITS, STATES, TEMPS, WEIGHTS, Program
from .layers import ckpt_working_set
from .states import grad_part

__all__ = ["backward", "layer_extras", "late_grads", "end_extra", "prepare"]

BWD_ORDER = (WEIGHTS, STATES, BUFFERS, GRADS, ACTS)


def layer_extras(s: Stage, grads_of_kind: list[int], step: int = 0) -> list[int]:
    """Each layer kind's backward beyond the running total, given its gradients' bytes: the
    largest of its transient, its attention's backward (the scores' backward comes after the
    MLP's and o_proj's: their gradients exist by then and, under autocast, their 16-bit
    weight copies are gone) and RMSNorm's backward (the second norm's, right after the MLP's:
    four fp32 T x h temporaries beside the MLP's gradients, its saved tensors gone); plus
    what it recomputes under checkpointing (op-level selective checkpointing reuses the mm
    outputs it kept: ``torch.utils.checkpoint``'s policy stores them, the recomputation does
    not run them again). ``step``: the optimizer in backward's step of one parameter, which
    runs when that parameter's gradient is complete, not inside another op's transient."""
    spec = s.spec
    norm_bwd = 0 if NORM_STYLES.get(spec.model_type, "llama") == "layernorm" else (
        16 * s.T * spec.hidden_size // s.sp_div)
    c_layer, ac, ckpt = s.c_layer, s.autocast, s.ckpt
    out = []
    grads = grads_of_kind if isinstance(grads_of_kind, _Shares) else late_grads(s, grads_of_kind)
    for k, act in enumerate(s.acts):
        attn_g, norm_g = grads[k]
        # QLoRA's dequantized weight (dequant) exists only inside a matmul: the MLP's
        own = max(act.backward_transient + s.dequant,
                  act.attn_backward + attn_g if act.attn_backward else 0,
                  norm_bwd + norm_g - act.saved.get("mlp", 0) - act.saved.get("moe", 0))
        back = (s.ckpt_input if s.recomputed[k] else ckpt_working_set(act)
                ) if s.o.activation_offload else 0  # unpacked from the host
        op_kept = (s.kept_of_kind[k] - s.ckpt_input
                   if s.o.checkpointing == "op-selective" else 0)
        out.append(max(own, step) + back + (
            s.kind_total[k] - op_kept + (c_layer if ac else 0) if s.recomputed[k]
            else act.s2 if ckpt == "selective" else 0))
    return out


class _Shares(list):  # type: ignore[type-arg]
    """:func:`late_grads`' answer: per kind, the gradient bytes the layer's backward has made
    by its attention scores' backward and by its second norm's (weight copies gone)."""


def late_grads(s: Stage, grads_of_kind: list[int]) -> _Shares:
    """Per layer kind (its gradients' bytes given): the gradient bytes that exist at the
    scores' backward (all but q/k/v's and the input norm's) and at the second norm's
    backward (the MLP's), less autocast's 16-bit copies of those weights, gone by then (what
    :func:`layer_extras` needs; no batch or sequence in it)."""
    share, mlp_share = s.layout.late, s.layout.mlp
    c_layer, ac = s.c_layer, s.autocast
    return _Shares(
        (int(grads_of_kind[k] * share[k] - (c_layer * share[k] if ac else 0)),
         int(grads_of_kind[k] * mlp_share[k] - (c_layer * mlp_share[k] if ac else 0)))
        for k in range(len(share)))


def prepare(s: Stage) -> None:
    """The backward's quantities with no batch or sequence in them (after
    :func:`memfit.step.layers.prepare`): the head's and embedding's gradients, each kind's,
    the tied table's first partial, :func:`late_grads` of the layers' backward."""
    g_head, g_embed = grad_part(s, "head"), grad_part(s, "embed")
    g_of_kind = _grads_of_kind(s, s.G - g_head - g_embed)
    tied_partial = (s.V * s.spec.hidden_size * (4 if s.autocast else s.grad_b)
                    if (s.last and s.first and s.spec.tie_word_embeddings and not s.lora)
                    else 0)
    quiet = s.accumulating or s.o.optimizer_in_backward  # no gradients appear in backward
    s.bwd_parts = (g_head, g_embed, g_of_kind, tied_partial,
                   late_grads(s, [0 if quiet else g for g in g_of_kind]))


def _grads_of_kind(s: Stage, g_layers: int) -> list[int]:
    """Each layer kind's share of the layers' gradients (a MoE layer's experts outweigh a
    dense layer's MLP); adapters alone (LoRA) are spread evenly."""
    g_layer = g_layers // max(1, len(s.layers))
    if s.lora or len(s.kind_list) == 1:
        return [g_layer] * len(s.kind_list)
    el = s.layout.elements
    total_el = sum(e * n for e, n in zip(el, s.kind_count, strict=True)) or 1
    return [g_layers * e // total_el for e in el]


def end_extra(s: Stage) -> int:
    """What the end of backward holds beyond every gradient: the embedding output's gradient
    (T h, residual dtype); tied tables sum two partial gradients (the LM head's and the
    embedding's) into a third tensor."""
    o, spec, V, h = s.o, s.spec, s.V, s.spec.hidden_size
    if not s.first or s.lora:
        return 0
    emb_out_grad = s.T * s.residual * h // s.sp_div
    if spec.tie_word_embeddings and o.pp == 1:
        g_tied = s.grad_b if not s.autocast else 4
        return max(2 * V * h * g_tied + (V * h * s.grad_b if s.accumulating else 0),
                   V * h * g_tied + emb_out_grad)
    if s.accumulating:
        emb_grad = V * h * s.grad_b // (s.N if (o.zero >= 2 or o.fsdp) else 1)
        return emb_grad + emb_out_grad
    return emb_out_grad


def backward(s: Stage, p: Program) -> None:
    o = s.o
    p.phase("backward", BWD_ORDER)
    # the loss' backward: its two fp32 gradients; the logits are gone
    p.moment((GRADS, s.G_prev), (ACTS, s.A_bwd + s.copies_bwd + s.loss_grads), (LOGITS, 0))
    g_head, g_embed, g_of_kind, tied_partial, late = s.bwd_parts
    # the optimizer in backward (torchtune's optimizer_in_bwd: a post-accumulate-grad hook
    # per parameter steps it and frees its gradient): one parameter's gradient and its step
    # at a time, never the full set
    oib = o.optimizer_in_backward
    if oib and g_head:  # the LM head's gradient, stepped at once
        p.alloc(TEMPS, s.oib_step["head"])
        p.free(TEMPS, s.oib_step["head"])
    # the LM head's gradients (tied: the shared table's first partial); its tensors gone
    p.moment((GRADS, s.G_prev if s.accumulating else (0 if oib else g_head) + tied_partial),
             (ACTS, s.A_bwd - s.A_head + s.copies_bwd - s.copies_head))
    step = s.oib_step["layer"] if oib else 0  # a parameter's gradient and step
    extra = layer_extras(s, late, step)
    inflight = s.inflight
    runs = s.kind_runs
    for i in reversed(range(len(runs))):  # the layers, last first
        k, n = runs[i]
        dg = 0 if (s.accumulating or oib) else g_of_kind[k]
        dck = 0 if s.recomputed[k] else s.c_layer  # its casts, kept unless recomputed
        block = ((ACTS, extra[k]),
                 (ACTS, -(extra[k] + inflight * s.kept_of_kind[k] + dck)),
                 (GRADS, dg))
        if i == 0:  # the last layer walked (layer 0): its gradients come with the end
            p.repeat(block, n - 1)
            p.repeat(block[:2], 1)
        else:
            p.repeat(block, n)
    # the end: every gradient (in backward: the embedding's, stepped when it is complete)
    p.moment((GRADS, g_embed if oib else s.G), (ACTS, s.inputs + s.tied_extra))
    if oib and g_embed:
        p.moment((GRADS, 0), (TEMPS, s.oib_step["embed"]), (ACTS, s.inputs))
