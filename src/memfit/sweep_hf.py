"""Sweep points in closed form over the batch: the estimator's own code run once per context
(hf: prompt and generate; training: seq) on a symbolic batch.

Every byte count of an hf estimate is integer arithmetic on the batch ``B`` (with the prompt,
the generated tokens and the model fixed): sums and products, and comparisons that pick the
largest candidate moment. :class:`BatchPoly` is a polynomial in ``B`` with integer
coefficients, valid on a range ``[lo, hi]`` of batches; running
:func:`memfit.engines._hf_best` (the per-stage totals, :func:`memfit.engines._hf_stage_total`)
on it gives the stage's peak as one polynomial per range (training: :func:`pieces` on the
plan's :func:`memfit.step.stage_run`), and each point then costs one polynomial
evaluation. Exactness is by construction, not by fitting:

* arithmetic that stays a polynomial (``+``, ``-``, ``*``, ``//`` by an integer dividing every
  coefficient) is done exactly on the coefficients;
* a comparison (``>``, ``max``, ``min``, ``==``, ``bool``) is answered only when it has the
  same answer for every batch of the range (a polynomial whose coefficients share one sign is
  monotone for ``B >= 0``, so its ends decide it); when the answer changes inside the range,
  :class:`_Split` names the first batch where it does and the range is cut there, each part
  evaluated again;
* anything else (a float, a division that does not stay a polynomial, a hash, an index, a
  non-monotone comparison on a one-point range is evaluated directly) raises, and the caller
  answers those points one by one with the single estimate.

So a polynomial this module returns is the very computation the single estimate runs, with
the same branches taken, for every batch of its range (tests/test_sweep.py compares every
point anyway).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from . import engines

__all__ = ["BatchPoly", "batch_pieces", "pieces", "value_at"]

# The most symbolic runs one group gets before its points are answered one by one, and the
# points per run it must hold at least (a symbolic run costs about as much as ten points:
# a group cut into many small ranges is cheaper one by one).
MAX_PIECES = 64
POINTS_PER_RUN = 8


class _Fail(Exception):
    """An operation :class:`BatchPoly` cannot do exactly: answer these points one by one."""


class _Split(Exception):
    """A comparison changes its answer inside the range: at batch ``at`` (lo < at <= hi)."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


def _trim(c: list[int]) -> tuple[int, ...]:
    while len(c) > 1 and c[-1] == 0:
        c.pop()
    return tuple(c)


class BatchPoly:
    """``sum(c[k] * B**k)`` for every integer batch ``B`` in ``[lo, hi]`` (``lo >= 1``)."""

    __slots__ = ("c", "lo", "hi")

    def __hash__(self) -> int:
        # a memo keyed on the batch (training's layer activations) keeps the symbolic
        # entry under its own key: only the same polynomial on the same range finds it
        return hash(("BatchPoly", self.c, self.lo, self.hi))

    def __init__(self, c: tuple[int, ...], lo: int, hi: int) -> None:
        self.c, self.lo, self.hi = c, lo, hi

    def at(self, B: int) -> int:
        v = 0
        for k in reversed(self.c):
            v = v * B + k
        return v

    # -- arithmetic ------------------------------------------------------------------------
    def _other(self, x: Any) -> tuple[int, ...]:
        if type(x) is BatchPoly:
            if (x.lo, x.hi) != (self.lo, self.hi):
                raise _Fail("two ranges")
            return x.c
        if type(x) is int or type(x) is bool:
            return (int(x),)
        raise _Fail(f"{type(x).__name__} operand")

    def _new(self, c: list[int]) -> BatchPoly:
        return BatchPoly(_trim(c), self.lo, self.hi)

    def __add__(self, x: Any) -> BatchPoly:
        a, b = self.c, self._other(x)
        n = max(len(a), len(b))
        return self._new([(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0)
                          for i in range(n)])

    __radd__ = __add__

    def __neg__(self) -> BatchPoly:
        return self._new([-k for k in self.c])

    def __pos__(self) -> BatchPoly:
        return self

    def __sub__(self, x: Any) -> BatchPoly:
        return self + (-BatchPoly(self._other(x), self.lo, self.hi))

    def __rsub__(self, x: Any) -> BatchPoly:
        return (-self) + x

    def __mul__(self, x: Any) -> BatchPoly:
        a, b = self.c, self._other(x)
        out = [0] * (len(a) + len(b) - 1)
        for i, u in enumerate(a):
            if u:
                for j, v in enumerate(b):
                    out[i + j] += u * v
        return self._new(out)

    __rmul__ = __mul__

    def __floordiv__(self, x: Any) -> BatchPoly:
        d = self._other(x)
        if len(d) != 1 or d[0] == 0 or any(k % d[0] for k in self.c):
            raise _Fail("a division that leaves a remainder")
        return self._new([k // d[0] for k in self.c])

    def __pow__(self, n: Any) -> BatchPoly:
        if type(n) is not int or not 0 <= n <= 4:
            raise _Fail("power")
        out = BatchPoly((1,), self.lo, self.hi)
        for _ in range(n):
            out = out * self
        return out

    def _no(self, *_: Any) -> Any:
        raise _Fail("an operation without an exact polynomial")

    __rfloordiv__ = __truediv__ = __rtruediv__ = __mod__ = __rmod__ = _no
    __divmod__ = __rdivmod__ = __rpow__ = __and__ = __or__ = __xor__ = _no
    __lshift__ = __rshift__ = __rlshift__ = __rrshift__ = __invert__ = _no
    __int__ = __float__ = __index__ = __round__ = __trunc__ = __floor__ = __ceil__ = _no

    # -- comparisons -----------------------------------------------------------------------
    def _sign_everywhere(self, pred: Callable[[int], bool]) -> bool:
        """``pred(value)`` (a threshold: ``> 0``, ``>= 0``, ``< 0`` or ``<= 0``) for every
        batch of the range, when it is the same for all of them; else :class:`_Split` at
        the first batch where it changes (the value is monotone in ``B``) or midway."""
        c, lo, hi = self.c, self.lo, self.hi
        first = pred(self.at(lo))
        if lo == hi or len(c) == 1:
            return first
        if len(c) > 2 and not (all(k >= 0 for k in c) or all(k <= 0 for k in c)):
            # not known to be monotone (a line always is): cut the range in halves
            raise _Split((lo + hi) // 2 + 1)
        if pred(self.at(hi)) == first:
            # monotone and the predicate a threshold (> 0, >= 0, < 0, <= 0): the ends
            # agree, so does every batch between them
            return first
        a, b = lo, hi  # pred(at(a)) == first != pred(at(b))
        while b - a > 1:
            m = (a + b) // 2
            if pred(self.at(m)) == first:
                a = m
            else:
                b = m
        raise _Split(b)

    def _diff(self, x: Any) -> BatchPoly:
        return self - x

    def __gt__(self, x: Any) -> bool:
        return self._diff(x)._sign_everywhere(lambda v: v > 0)

    def __ge__(self, x: Any) -> bool:
        return self._diff(x)._sign_everywhere(lambda v: v >= 0)

    def __lt__(self, x: Any) -> bool:
        return self._diff(x)._sign_everywhere(lambda v: v < 0)

    def __le__(self, x: Any) -> bool:
        return self._diff(x)._sign_everywhere(lambda v: v <= 0)

    def __eq__(self, x: Any) -> bool:  # type: ignore[override]
        if type(x) is not BatchPoly and type(x) is not int and type(x) is not bool:
            raise _Fail("comparison with a non-integer")
        d = self._diff(x)  # zero everywhere: neither above nor below zero anywhere
        return not d._sign_everywhere(_positive) and not d._sign_everywhere(_negative)

    def __ne__(self, x: Any) -> bool:  # type: ignore[override]
        return not self == x

    def __bool__(self) -> bool:
        return not self == 0

    def __abs__(self) -> BatchPoly:
        return self if self >= 0 else -self

    def __repr__(self) -> str:
        return f"BatchPoly({self.c}, B in [{self.lo}, {self.hi}])"

    def __format__(self, spec: str) -> str:  # only ever read in lazy texts
        return repr(self)

    __str__ = __repr__


def _positive(v: int) -> bool:
    return v > 0


def _negative(v: int) -> bool:
    return v < 0


def _peak(spec: Any, o: Any) -> Any:
    """The most loaded stage's total through the engine's own :func:`memfit.engines._hf_best`."""
    return engines._hf_best(spec, o, stage=engines._hf_stage_total)[0]["total"]


def batch_pieces(spec: Any, make: Callable[[Any], Any], lo: int, hi: int,
                 points: int = MAX_PIECES * POINTS_PER_RUN
                 ) -> list[tuple[int, int, BatchPoly | int]] | None:
    """The most loaded stage's peak under hf (what :func:`memfit.engines.hf_verdict` calls
    ``peak``) for every batch in ``[lo, hi]`` (:func:`pieces`); ``make(batch)`` builds the
    options with that batch."""
    return pieces(lambda b: _peak(spec, make(b)), lo, hi, points)


def pieces(peak_of: Callable[[BatchPoly], Any], lo: int, hi: int,
           points: int = MAX_PIECES * POINTS_PER_RUN
           ) -> list[tuple[int, int, BatchPoly | int]] | None:
    """``peak_of`` for every batch in ``[lo, hi]``, as ``(lo, hi, polynomial)`` pieces
    sorted by ``lo``, each exact on its range (``peak_of`` run on a symbolic batch, cut where
    a comparison changes); None when its arithmetic cannot be followed exactly (the caller
    then answers each point alone, as it does when the ``points`` to answer would cost more
    than :data:`POINTS_PER_RUN` each in symbolic runs)."""
    out: list[tuple[int, int, BatchPoly | int]] = []
    todo = [(lo, hi)]
    runs, most = 0, min(MAX_PIECES, points // POINTS_PER_RUN)
    while todo:
        a, b = todo.pop()
        runs += 1
        if runs > most:
            return None
        try:
            v = peak_of(BatchPoly((0, 1), a, b))
        except _Split as cut:
            todo += [(cut.at, b), (a, cut.at - 1)]
            continue
        except Exception:  # noqa: BLE001 - any failure: the points are answered one by one
            return None
        if type(v) is not BatchPoly and type(v) is not int:
            return None
        out.append((a, b, v))
    return out  # (the lower range is always taken first: sorted)


def value_at(parts: list[tuple[int, int, BatchPoly | int]], starts: list[int],
             batch: int) -> int:
    """The peak at ``batch`` from :func:`pieces` (``starts``: each piece's ``lo``)."""
    v = parts[bisect.bisect_right(starts, batch) - 1][2]
    return v if type(v) is int else v.at(batch)  # type: ignore[union-attr]
