"""Exact boundaries: the largest integer for which a monotone predicate still holds.

The inverse questions (largest batch, longest context, fewest GPUs) are all "the largest x in
[lo, hi] with fits(x)", where memory grows with x. The answer fits and answer + 1 does not.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["largest_true", "smallest_true"]


def largest_true(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest x in [lo, hi] with ``pred(x)``, for ``pred`` true then false; None if none.

    Exponential search up from ``lo`` then bisection: O(log answer) evaluations.
    """
    if lo > hi or not pred(lo):
        return None
    good, step = lo, 1
    while True:  # find a failing bound
        probe = min(good + step, hi)
        if probe == good:
            return good
        if not pred(probe):
            bad = probe
            break
        good = probe
        if good == hi:
            return hi
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if pred(mid):
            good = mid
        else:
            bad = mid
    return good


def smallest_true(pred: Callable[[int], bool], candidates: list[int]) -> int | None:
    """The first candidate (in the given order) with ``pred``; None if none."""
    for x in candidates:
        if pred(x):
            return x
    return None
