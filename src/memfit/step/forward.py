"""The forward and optimizer phases as events (unsharded parameters; FSDP2 in
:mod:`memfit.step.fsdp`).

Forward: the model states, then the token ids, the embedding's output, the rotary tables and
masks; each layer adds what it keeps for backward (and, under autocast, its 16-bit weight
copies; without checkpointing the ``DynamicCache``'s copies); the largest layer's working set
passes at the last layer; then the loss: the masks go (the decoder's forward has returned),
the head's saved tensors, the fp32 upcast and the logits arrive.
"""

from __future__ import annotations

from .context import Stage
from .events import ACTS, BUFFERS, GRADS, LOGITS, STATES, TEMPS, WEIGHTS, Program

__all__ = ["model_states", "forward", "optimizer", "prepare"]

FWD_ORDER = (WEIGHTS, STATES, GRADS, ACTS, LOGITS, BUFFERS)
OPT_ORDER = (WEIGHTS, STATES, GRADS, TEMPS, ACTS, BUFFERS)


def model_states(s: Stage, p: Program) -> None:
    """What is resident before the step: weights (with ZeRO-3 / FSDP gathered ones), optimizer
    state and masters, the gradients of earlier micro-batches, communication buckets."""
    p.alloc(WEIGHTS, s.Wres)
    p.alloc(STATES, s.Ost)
    p.alloc(GRADS, s.G_prev)
    p.alloc(BUFFERS, s.buffers)


def forward(s: Stage, p: Program) -> None:
    p.phase("forward", FWD_ORDER)
    inflight = s.inflight
    p.alloc(ACTS, s.inputs)
    p.alloc(ACTS, inflight * (s.A_emb + s.shared))
    copy = s.copy_layer if s.copies_per_layer else 0
    less = inflight * s.first_unsaved + (s.copy_first_less if s.copies_per_layer else 0)
    for i, (k, n) in enumerate(s.kind_runs):  # each layer: what it keeps, its casts, cache
        v = inflight * s.kept_of_kind[k] + s.cache_of_kind[k] + copy
        if i == 0:  # the first layer keeps less (nothing before the first adapter)
            p.alloc(ACTS, v - less)
            n -= 1
        p.repeat(((ACTS, v),), n)
    p.alloc(ACTS, 0 if s.copies_per_layer else s.copies_fwd_mid - s.copies_head)
    p.alloc(ACTS, s.fwd_layer_t)  # the largest layer's working set
    p.free(ACTS, s.fwd_layer_t)
    # the loss
    p.free(ACTS, 0 if s.ckpt == "full" else inflight * s.masks)
    p.free(ACTS, s.copies_fwd_mid - s.copies_head)
    p.alloc(ACTS, s.A_head + s.copies_fwd_loss + s.upcast)
    p.alloc(LOGITS, s.logits)


def _master_cast_extra(s: Stage, g16: int, gb: int) -> int:
    """The most bf16-master's gradient casts hold beyond every fp32 gradient (see
    :func:`optimizer`): max over tensors i of g_i - (16-bit bytes after i), with the embedding
    first (2 g_0 - G16), then the last layer's tensors (its norms last, as transformers
    registers them), the final norm and an untied LM head."""
    from ..memory.model_states import layer_tensors

    spec, h, V = s.spec, s.spec.hidden_size, s.V
    groups = layer_tensors(spec, s.layers[-1].moe, s.o.tp, s.o.ep)
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


def prepare(s: Stage) -> None:
    """The optimizer phase's quantities with no batch or sequence in them (after
    :func:`memfit.step.layers.prepare`): ``s.master_cast``, bf16-master's gradient casts."""
    o, sb = s.o, s.sb
    s.master_cast = None
    if s.recipe.master_bytes and not s.lora and o.zero == 0 and o.fsdp is None and o.pp == 1:
        # bf16-master casts each 16-bit gradient to its master's fp32 one and frees it, in
        # parameter order: at tensor i the fp32 gradients of tensors <= i meet the 16-bit ones
        # of tensors >= i, 2 G16 + g_i - (16-bit bytes after i); largest at the embedding
        # (first), at the last layer's big tensors or the LM head. With few step temporaries
        # (SGD, fused) or a large vocabulary that moment outweighs the step.
        s.master_cast = sb.step_gradients + _master_cast_extra(s, sb.gradients,
                                                               s.recipe.grad_bytes)


def optimizer(s: Stage, p: Program) -> None:
    """The step: weights (gathered ones released), state, the gradients the step reads
    (fp32 ones for bf16-master), its temporaries (``foreach`` copies a whole state, ``fused``
    none; :mod:`memfit.memory.model_states`)."""
    o, sb = s.o, s.sb
    p.phase("optimizer", OPT_ORDER)
    base = ((WEIGHTS, sb.weights), (ACTS, s.inputs), (LOGITS, 0),
            (BUFFERS, 0 if o.fsdp else s.buffers))
    if s.master_cast is not None:
        p.moment(*base, (GRADS, s.master_cast), (TEMPS, 0))
    if o.optimizer_in_backward:  # stepped in backward: nothing left but the states
        p.moment(*base, (GRADS, 0), (TEMPS, 0))
        return
    p.moment(*base, (GRADS, sb.step_gradients), (TEMPS, sb.temporaries))
