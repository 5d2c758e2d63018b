"""The sharding part for FSDP2: the forward and backward of one ``fully_shard`` rank, moment
by moment (the model states of ZeRO and FSDP at rest are :func:`memfit.memory.model_states.
shard_states`)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress
from operator import ne, or_

from ..memory.model_states import fsdp_padded_elements
from .backward import late_grads, layer_extras
from .context import Stage
from .events import ACTS, BUFFERS, GRADS, LOGITS, STATES, WEIGHTS, Program, Sweep
from .layers import kept_list
from .states import weight_bytes

__all__ = ["FsdpStep", "fsdp_phases", "prepare"]

_ORDER = (WEIGHTS, STATES, GRADS, BUFFERS, ACTS, LOGITS)


@dataclass(frozen=True)
class FsdpStep:
    """What :func:`_timeline` needs of one rank (bytes, unless said elements)."""

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


def prepare(s: Stage) -> None:
    """The rank's units (elements of one decoder layer, with gradients and all-gathered):
    ``s.fsdp_units`` (after :func:`memfit.step.states.build`; no batch or sequence in them)."""
    o, xin = s.o, s.xin
    n_layers = max(1, len(s.layers))
    grad_unit = s.padded_layers // n_layers  # a layer's elements with gradients
    # a layer's parameters, all-gathered: with LoRA the frozen base and its adapters
    unit = (fsdp_padded_elements(tuple(g for g in s.groups + s.trainable if g.part == "layer"),
                                 s.N) // n_layers if s.lora else grad_unit)
    if o.qlora:  # the NF4 base is all-gathered as stored (packed values and scales)
        base = tuple(g for g in s.groups if g.part == "layer")
        unit = (-(-weight_bytes(base, s.recipe, True) // (n_layers * xin.compute_bytes))
                + grad_unit)
    s.fsdp_units = unit, grad_unit
    # a layer's gradients are unsharded (c U) until its reduce-scatter
    s.fsdp_late = late_grads(s, [xin.compute_bytes * grad_unit] * len(s.kind_list))


_STEP_FIELDS = tuple(FsdpStep.__dataclass_fields__)


def _step(s: Stage) -> FsdpStep:
    """The rank's FSDP2 quantities: units, their dtypes, the activations' moments."""
    o, xin, spec = s.o, s.xin, s.spec
    unit, grad_unit = s.fsdp_units
    extra = layer_extras(s, s.fsdp_late)
    edge = s.first or s.last
    return _fsdp_step(
        sharded=s.sb.weights, states=s.Ost, prev_grads=s.G_prev,
        c=xin.compute_bytes, r=s.recipe.grad_bytes, N=s.N,
        root=xin.root_elements if edge else 0,
        head=s.parts["head"] if s.last else 0, emb=s.parts["embed"] if s.first else 0,
        tied=spec.tie_word_embeddings and s.first and s.last,
        unit=unit, grad_unit=grad_unit, grad_op=o.fsdp == "grad-op",
        root_grad=0 if s.lora else xin.root_elements if edge else 0,
        kept=kept_list(s), extra=list(map(extra.__getitem__, s.layer_kind)),
        acts_all=s.A_all, acts_bwd=s.A_bwd, acts_head=s.A_head, inputs=s.inputs,
        fwd_layer=s.fwd_layer_t, fwd_loss=s.A_bwd + s.upcast + s.cache_fwd, logits=s.logits,
        loss_grads=s.loss_grads,
        emb_out_grad=s.T * s.residual * spec.hidden_size // s.sp_div if s.first else 0)


def _fsdp_step(**kw: object) -> FsdpStep:
    """``FsdpStep(**kw)`` as its generated ``__init__`` makes it (every field given), without
    the frozen class's ``object.__setattr__`` per field."""
    assert len(kw) == len(_STEP_FIELDS)
    f = object.__new__(FsdpStep)
    f.__dict__.update(kw)
    return f


def fsdp_phases(s: Stage, p: Program) -> None:
    """Forward and backward of one FSDP2 rank, moment by moment.

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
    f = _step(s)
    cU, cR = f.c * f.unit, f.c * f.root
    L = len(f.kept)
    held = L * cU if f.grad_op else 0  # grad-op: layers kept whole

    sharded, states, frame = f.sharded, f.states, p.frame

    def moment(params: int, flats: int, grads: int, acts: int, logits: int = 0) -> None:
        # weights, optimizer states, gradients, activations, logits, comm buffers
        frame((sharded + params, states, grads, acts, logits, flats))

    if isinstance(p, Sweep):  # the same, in one call
        moment = p.framer(sharded, states)  # noqa: F811

    # -- forward: the root's parameters throughout; each layer's all-gather and compute
    p.phase("forward", _ORDER)
    p0 = f.prev_grads
    above = f.acts_all - f.acts_head
    held_before_last = (L - 1) * cU if f.grad_op else 0
    moment(cR + cU, cR + cU, p0, f.inputs)  # layer 0's copy-out beside the root's flat
    moment(cR + held_before_last + cU, 2 * cU, p0, above - (f.kept[-1] if L else 0))
    moment(cR + held_before_last + cU, cU, p0, above + f.fwd_layer)
    moment(cR + held, cU, p0, f.fwd_loss, f.logits)  # the loss; the last flat buffer
    p.phase("backward", _ORDER)
    # full: the root was resharded when the forward ended and is gathered again
    moment(cR + held, 0 if f.grad_op else cR, p0, f.acts_bwd)
    moment(cR + held, 0 if f.grad_op else cU, p0, f.acts_bwd + f.loss_grads)
    _backward_walk(f, moment)


def _backward_walk(f: FsdpStep, moment) -> None:  # type: ignore[no-untyped-def]
    """The layers' backward from the last, then the embedding's and the root's."""
    cU, cR = f.c * f.unit, f.c * f.root
    cG, rG = f.c * f.grad_unit, f.r * f.grad_unit  # a layer's 16-bit gradients, flat input
    L = len(f.kept)
    done = 0 if f.prev_grads else 1  # accumulating micro-batches add to existing shards
    whole = L * cU if f.grad_op else 0  # grad-op: every layer still unsharded
    # the LM head's 16-bit gradient (tied: the shared table's first partial) until the root's
    # turn
    head_grad = f.c * (f.emb if f.tied else f.head)
    g = f.prev_grads + head_grad
    a = f.acts_bwd - f.acts_head
    rs_prev = 0
    own = 0 if f.grad_op else cU  # a layer's parameters, gathered again for its backward
    shard = done * -(-rG // f.N)
    # Along a run of identical layers each moment changes linearly (the shards grow, the
    # activations shrink), so its largest is at the run's first or last layer: only those
    # (and the walk's two ends, where the prefetch and the previous flat buffer change) are
    # emitted.
    kept, extra = f.kept, f.extra
    ends = {0, 1, L - 2, L - 1}
    # (layers whose kept activations or transient differ from the previous layer's)
    ends.update(compress(range(1, L), map(or_, map(ne, kept[1:], kept),
                                          map(ne, extra[1:], extra))))
    ends |= {i - 1 for i in ends if i > 0}
    step_whole = cU if f.grad_op else 0
    nxt = L  # the layers from nxt on are done
    for i in sorted((i for i in ends if 0 <= i < L), reverse=True):
        skipped = nxt - 1 - i  # the layers between two emitted ones: their sums at once
        if skipped > 0:
            a -= sum(kept[i + 1:nxt])
            whole -= step_whole * skipped
            g += shard * skipped
        prefetch = cU if (i and not f.grad_op) else 0  # layer i-1's all-gather
        pr, fl = cR + whole + own, prefetch + rs_prev
        after = pr - own - (cU if f.grad_op else 0)
        moment(pr, fl, g, a + extra[i])  # the layer's own backward peak
        # done: all its 16-bit gradients, its parameters not yet resharded
        moment(pr, fl, g + cG, a - kept[i])
        # its reduce-scatter: the gradients copied into the flat input (the previous one
        # freed), then with the shard made, layer i-1's copy-out
        moment(after, rG + prefetch, g + cG, a - kept[i])
        moment(after + prefetch, rG + prefetch, g + shard, a - kept[i])
        rs_prev = rG
        a -= kept[i]
        whole -= step_whole
        g += shard
        nxt = i
    if nxt > 0:  # (layer 0 is always emitted: nothing is left)
        a -= sum(kept[:nxt])
        whole -= step_whole * nxt
        g += shard * nxt
    # the embedding's backward (beside the root's parameters and the LM head's gradient),
    # then the root's reduce-scatter: its 16-bit gradients and their flat fp32 input
    emb_grads = f.c * f.emb * (2 if f.tied else 1)
    moment(cR, rs_prev, g + emb_grads, a + f.emb_out_grad + f.inputs)
    if f.root_grad:
        rR = f.r * f.root_grad
        moment(0, rR, g - head_grad + f.c * f.root_grad, f.inputs)
        # (its output, r R / N, is allocated once the embedding's 16-bit gradient is freed)
        moment(0, rR, g - head_grad + f.c * (f.root_grad - f.emb) + -(-rR // f.N), f.inputs)

