"""One pipeline stage's rank, replayed: the parts build their quantities, emit the step's
events in program order, and :func:`memfit.step.events.sweep` gives each phase's peak.

The model-states part depends on the layout and the recipe, not on the batch or the sequence:
:func:`stage_base` builds it once per scenario structure (``memfit.training`` memoises it per
model); :func:`stage_run` copies it and adds the activation side for one batch and sequence."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..memory.breakdown import Phase
from . import fsdp, layers, states
from .backward import backward, end_extra
from .backward import prepare as backward_prepare
from .context import Ctx, Stage
from .events import Program, Sweep
from .forward import forward, model_states, optimizer
from .forward import prepare as optimizer_prepare
from .fsdp import fsdp_phases
from .terms import terms

__all__ = ["stage_estimate", "stage_base", "stage_run"]


def program(s: Stage, p: Program | None = None) -> Program:
    """The step's events: model states, forward, backward (FSDP2's timeline when sharded by
    ``fully_shard``), the optimizer step (into ``p``: a new :class:`Program` by default, a
    :class:`Sweep` to sweep them as they come)."""
    if p is None:
        p = Program()
    model_states(s, p)
    if s.o.fsdp is not None and s.o.dp > 1:
        fsdp_phases(s, p)
    else:
        forward(s, p)
        backward(s, p)
    optimizer(s, p)
    return p


def stage_base(c: Ctx, stage: int, counts: list[int]) -> Stage:
    """The stage's rank with its model states built (nothing that depends on the batch or
    the sequence): the template :func:`stage_run` copies."""
    s = Stage(c, stage, counts)
    states.build(s)
    layers.prepare(s)
    optimizer_prepare(s)
    if c.o.fsdp is not None and c.o.dp > 1:
        fsdp.prepare(s)
    else:
        backward_prepare(s)
    return s


def stage_run(base: Stage, c: Ctx) -> dict[str, Any]:
    """Phases, terms and host bytes of the stage's rank for ``c`` (``base``'s structure, with
    ``c``'s batch and sequence): a fresh copy of ``base``, so each estimate's lazily built
    terms read their own quantities."""
    s = object.__new__(Stage)
    s.__dict__.update(base.__dict__)
    s.c, s.o = c, c.o
    layers.build(s)
    s.tied_extra = end_extra(s)
    sw = Sweep()
    program(s, sw)
    swept = sw.phases()
    phases = tuple(_phase(name, comp) for name, comp in swept)
    notes = s.sb.notes
    if c.o.activation_offload:
        notes = (*notes, f"activation offload: {s.offloaded * s.inflight} bytes of saved "
                 "activations in host memory (torchtune OffloadActivations)")
    return {"phases": phases, "peak": max(sum(comp.values()) for _, comp in swept),
            "terms": partial(terms, s), "host": s.sb.host, "shards": s.N,
            "notes": notes, "trainable": s.P, "stage": s.stage, "layers": len(s.layers)}


def _phase(name: str, components: dict[str, int]) -> Phase:
    """``Phase(name, components)`` as its generated ``__init__`` makes it, without the frozen
    class's ``object.__setattr__`` per field."""
    p = object.__new__(Phase)
    d = p.__dict__
    d["name"] = name
    d["components"] = components
    return p


def stage_estimate(c: Ctx, stage: int, counts: list[int]) -> dict[str, Any]:
    """Phases, terms and host bytes of one pipeline stage's rank."""
    return stage_run(stage_base(c, stage, counts), c)
