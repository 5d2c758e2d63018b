"""One pipeline stage's rank, replayed: the parts build their quantities, emit the step's
events in program order, and :func:`memfit.step.events.sweep` gives each phase's peak."""

from __future__ import annotations

from functools import partial
from typing import Any

from ..memory.breakdown import Phase
from . import layers, states
from .backward import backward, end_extra
from .context import Ctx, Stage
from .events import Program, sweep
from .forward import forward, model_states, optimizer
from .fsdp import fsdp_phases
from .terms import terms

__all__ = ["stage_estimate"]


def program(s: Stage) -> Program:
    """The step's events: model states, forward, backward (FSDP2's timeline when sharded by
    ``fully_shard``), the optimizer step."""
    p = Program()
    model_states(s, p)
    if s.o.fsdp is not None and s.o.dp > 1:
        fsdp_phases(s, p)
    else:
        forward(s, p)
        backward(s, p)
    optimizer(s, p)
    return p


def stage_estimate(c: Ctx, stage: int, counts: list[int]) -> dict[str, Any]:
    """Phases, terms and host bytes of one pipeline stage's rank."""
    s = Stage(c, stage, counts)
    states.build(s)
    layers.build(s)
    s.tied_extra = end_extra(s)
    phases = tuple(Phase(name, comp) for name, comp in sweep(program(s).ops))
    notes = s.sb.notes
    if c.o.activation_offload:
        notes = (*notes, f"activation offload: {s.offloaded * s.inflight} bytes of saved "
                 "activations in host memory (torchtune OffloadActivations)")
    return {"phases": phases, "terms": partial(terms, s), "host": s.sb.host, "shards": s.N,
            "notes": notes, "trainable": s.P, "stage": stage, "layers": len(s.layers)}
