"""The events of one training step and the sweep that finds each phase's peak.

A step is replayed as a program: the parts (:mod:`memfit.step.parts`) append allocations and
frees in program order, each tagged with its owner (one of :data:`OWNERS`), and phase marks.
:func:`sweep` walks the program once, keeping the live bytes per owner, and returns each
phase's peak with what it is made of. It knows nothing about models: it is XLA's
``HeapSimulator`` reduced to owners (buffers with live ranges over a schedule, one pass gives
the peak and the buffers that make it), and what ``torch.cuda.memory._snapshot()`` and
``torch.distributed._tools.mem_tracker.MemTracker`` report by owner (parameter, gradient,
optimizer state, activation, temporary).

Operations (tuples, for speed):

* ``(ALLOC, owner, n)``: ``n`` bytes allocated (``n < 0``: freed). A positive one is a moment
  the sweep looks at: the first largest total of a phase is its peak (ties go to the earlier
  moment).
* ``(MOMENT, {owner: bytes}, None)``: the listed owners become those bytes (what happens in
  between is not modelled, only the moment), and the sweep looks at the result. The FSDP2
  timeline and the phases' opening states are moments.
* ``(REPEAT, block, n)``: ``block`` (a tuple of ``(owner, n)`` allocations and frees) ``n``
  times, as over a run of identical layers. Each repetition moves the totals by the same net
  amount, so the run's largest moment is in its first repetition (net <= 0) or its last (net
  > 0): the block is swept once, the other repetitions only added. Estimates stay in
  microseconds whatever the depth.
* ``(PHASE, name, order)``: a new phase begins; its components are reported in ``order``.
* ``(FRAME, values, None)``: a moment that sets the first six owners (weights to comm
  buffers, in :data:`OWNERS` order) at once; the FSDP2 timeline is made of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["OWNERS", "Program", "Sweep", "sweep", "FRAME", "WEIGHTS", "STATES", "GRADS", "ACTS",
           "LOGITS", "BUFFERS", "TEMPS"]

#: The owners a byte can have (the estimate's components).
OWNERS = ("weights", "optimizer_states", "gradients", "activations", "logits", "comm_buffers",
          "temporaries")
#: The components a phase reports even when zero.
_ALWAYS = frozenset((0, 1, 2, 3))  # weights, optimizer_states, gradients, activations

ALLOC, MOMENT, REPEAT, PHASE, FRAME = 0, 1, 2, 3, 4
#: The owners' indices, as the parts name them in their events.
WEIGHTS, STATES, GRADS, ACTS, LOGITS, BUFFERS, TEMPS = range(len(OWNERS))

Block = tuple[tuple[int, int], ...]


class Program:
    """A step's operations in program order (see the module docstring); owners are named by
    their index in :data:`OWNERS` (``WEIGHTS``, ``GRADS``...)."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[int, Any, Any]] = []

    def alloc(self, owner: int, n: int) -> None:
        if n:
            self.ops.append((ALLOC, owner, n))

    def free(self, owner: int, n: int) -> None:
        if n:
            self.ops.append((ALLOC, owner, -n))

    def moment(self, *live: tuple[int, int]) -> None:
        """The listed ``(owner, bytes)`` become the live bytes of those owners."""
        self.ops.append((MOMENT, live, None))

    def frame(self, values: tuple[int, int, int, int, int, int]) -> None:
        """A moment setting ``WEIGHTS`` ... ``BUFFERS`` (owners 0-5) to ``values``."""
        self.ops.append((FRAME, values, None))

    def repeat(self, block: Block, n: int) -> None:
        if n == 1:
            self.ops.extend((ALLOC, k, v) for k, v in block if v)
        elif n > 1:
            self.ops.append((REPEAT, block, n))

    def phase(self, name: str, order: tuple[int, ...]) -> None:
        """A new phase, reporting its components in ``order`` (owner indices)."""
        self.ops.append((PHASE, name, order))


class Sweep(Program):
    """A :class:`Program` swept as the parts emit it: :func:`sweep` over the operations,
    without keeping them (``phases()`` is ``sweep(program.ops)``, the same moments in the
    same order; ``total`` is always ``sum(live)``)."""

    __slots__ = ("live", "total", "best_total", "best", "name", "order", "done")

    def __init__(self) -> None:
        self.live = [0] * len(OWNERS)
        self.total = 0
        self.best_total, self.best = -1, self.live
        self.name: str | None = None
        self.order: tuple[int, ...] = ()
        self.done: list[tuple[str, dict[str, int]]] = []

    def alloc(self, owner: int, n: int) -> None:
        if n:
            live = self.live
            live[owner] += n
            total = self.total = self.total + n
            if n > 0 and total > self.best_total:
                self.best_total, self.best = total, live[:]

    def free(self, owner: int, n: int) -> None:
        if n:
            self.live[owner] -= n
            self.total -= n

    def moment(self, *live_: tuple[int, int]) -> None:
        live, total = self.live, self.total
        for i, n in live_:
            total += n - live[i]
            live[i] = n
        self.total = total
        if total > self.best_total:
            self.best_total, self.best = total, live[:]

    def frame(self, values: tuple[int, int, int, int, int, int]) -> None:
        live = self.live
        live[:6] = values
        total = self.total = sum(values) + live[6]
        if total > self.best_total:
            self.best_total, self.best = total, live[:]

    def framer(self, weights: int, states: int) -> Callable[..., None]:
        """``moment(params, flats, grads, acts, logits=0)``: :meth:`frame` of ``(weights +
        params, states, grads, acts, logits, flats)``, in one call (the FSDP2 timeline's)."""
        live = self.live

        def moment(params: int, flats: int, grads: int, acts: int, logits: int = 0) -> None:
            w = weights + params
            live[0], live[1], live[2], live[3], live[4], live[5] = (w, states, grads, acts,
                                                                    logits, flats)
            total = self.total = w + states + grads + acts + logits + flats + live[6]
            if total > self.best_total:
                self.best_total, self.best = total, live[:]

        return moment

    def repeat(self, block: Block, n: int) -> None:
        if n == 1:
            for k, v in block:
                if v > 0:
                    self.alloc(k, v)
                elif v:
                    self.free(k, -v)
        elif n > 1:
            live, total, best_total = self.live, self.total, self.best_total
            steps = n - 1
            net = 0
            for _, m in block:
                net += m
            if net > 0:  # the last repetition is the largest: add the others first
                for i, m in block:
                    live[i] += m * steps
                total += net * steps
            for i, m in block:
                live[i] += m
                total += m
                if m > 0 and total > best_total:
                    best_total, self.best = total, live[:]
            if net <= 0:
                for i, m in block:
                    live[i] += m * steps
                total += net * steps
            self.total, self.best_total = total, best_total

    def phase(self, name: str, order: tuple[int, ...]) -> None:
        if self.name is not None:
            self.done.append((self.name, _report(self.order, self.best)))
        self.name, self.order = name, order
        self.best_total, self.best = -1, self.live

    def phases(self) -> list[tuple[str, dict[str, int]]]:
        """Each phase's peak moment, by owner (as :func:`sweep` returns them)."""
        if self.name is not None:
            self.done.append((self.name, _report(self.order, self.best)))
            self.name = None
        return self.done


_REPORTS: dict[tuple[int, ...], Any] = {}


def _report(order: tuple[int, ...], live: list[int]) -> dict[str, int]:
    """A phase's components at its peak: ``order`` first, then any other owner with bytes."""
    plan = _REPORTS.get(order)
    if plan is None:  # per phase order (a handful): its owners, then the others
        if len(_REPORTS) >= 64:
            _REPORTS.clear()
        plan = _REPORTS[order] = (
            tuple((OWNERS[i], i, i in _ALWAYS) for i in order),
            tuple((k, i) for i, k in enumerate(OWNERS) if i not in order))
    first, rest = plan
    out = {k: live[i] for k, i, always in first if always or live[i]}
    for k, i in rest:
        if live[i]:
            out[k] = live[i]
    return out


def sweep(ops: Iterable[tuple[int, Any, Any]]) -> list[tuple[str, dict[str, int]]]:
    """Each phase's peak moment, by owner: ``[(phase name, {owner: bytes}), ...]``."""
    live = [0] * len(OWNERS)
    total = 0
    phases: list[tuple[str, dict[str, int]]] = []
    name: str | None = None
    order: tuple[int, ...] = ()
    best_total, best = -1, live
    for op, a, b in ops:
        if op == ALLOC:
            live[a] += b
            total += b
            if b > 0 and total > best_total:
                best_total, best = total, live[:]
        elif op == FRAME:  # (total is always sum(live))
            live[:6] = a
            total = sum(a) + live[6]
            if total > best_total:
                best_total, best = total, live[:]
        elif op == MOMENT:
            for i, n in a:
                total += n - live[i]
                live[i] = n
            if total > best_total:
                best_total, best = total, live[:]
        elif op == REPEAT:
            steps = b - 1
            net = 0
            for _, n in a:
                net += n
            if net > 0:  # the last repetition is the largest: add the others first
                for i, n in a:
                    live[i] += n * steps
                total += net * steps
            for i, n in a:
                live[i] += n
                total += n
                if n > 0 and total > best_total:
                    best_total, best = total, live[:]
            if net <= 0:
                for i, n in a:
                    live[i] += n * steps
                total += net * steps
        else:  # PHASE
            if name is not None:
                phases.append((name, _report(order, best)))
            name, order = a, b
            best_total, best = -1, live
    if name is not None:
        phases.append((name, _report(order, best)))
    return phases
