"""Many scenarios of one model at once: ``sweep(model, mode, grid, **options)``.

A sweep answers what a single estimate's ``peak_bytes``, ``total_bytes`` and ``fits`` would
answer for every point of a grid, exactly (tests/test_sweep.py compares every point with
``memfit.infer`` / ``memfit.train``), and spends per point only what depends on the point:

* the model is resolved once (a catalog name, a path, a config dict or a spec);
* the options shared by every point are built and checked once; a point that changes only
  ``batch``, ``prompt`` or ``generate`` copies them and re-runs the class's own checks
  (``__post_init__``) on the copy;
* under the hf engine and in training, the points that change only the batch and the
  context (``prompt``/``generate``; ``seq``) are grouped by their context, and each group's
  peak is computed once as a polynomial in the batch (:mod:`memfit.sweep_hf`: the engine's
  own stage totals, :func:`memfit.engines._hf_best` / the training plan and
  :func:`memfit.step.stage_run`, run on a symbolic batch; a comparison that changes inside
  the group's batch range cuts the range there). Each point then costs one polynomial
  evaluation and the overheads; a group whose arithmetic cannot be followed exactly, and
  every point that fails a check, is answered one by one
  (:func:`memfit.engines.hf_verdict`, or the full estimate);
* what does not depend on batch and context (a stage's weights, cache rows and split
  points, the valid layout, the training plan) is memoised per model as in a single
  estimate.

Other engines and checkpoints read from headers run the full estimate per point (with the
model resolved once).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import sweep_hf
from .catalog import resolve_model_full
from .engines import _context_blockers, _gpu, hf_verdict
from .errors import MemfitError
from .inference import _check_layout, _default_prompt, apply_checkpoint, estimate_inference
from .memory.overhead import overhead_bytes
from .memory.weights import memo_table
from .sweep_hf import batch_pieces, pieces, value_at
from .workload import InferenceOptions, TrainingOptions, default_within, make_options

__all__ = ["SweepPoint", "sweep", "grid_points"]

# The most points one sweep answers (its result holds one SweepPoint per point).
MAX_POINTS = 1_000_000

# The options a point may change on the fast path: the ones no stage structure depends on.
_POINT_FIELDS = frozenset({"batch", "prompt", "generate"})


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One point of a sweep: its own options and what the single estimate answers (``error``:
    the refusal's one-line message, the numbers then None)."""

    options: Mapping[str, Any]
    peak_bytes: int | None
    total_bytes: int | None
    fits: bool | None
    error: str | None = None


def grid_points(grid: Mapping[str, Sequence[Any]] | Iterable[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    """The points of ``grid``: a mapping of option -> values is their cartesian product (the
    last option varying fastest); an iterable of mappings is taken as it is. At most
    :data:`MAX_POINTS` points."""
    if isinstance(grid, Mapping):
        names = list(grid)
        for name in names:
            if not isinstance(name, str):
                raise MemfitError.bad_value("grid", name, "option names as keys")
            if isinstance(grid[name], (str, bytes)) or not isinstance(grid[name], Iterable):
                raise MemfitError.bad_value("grid", name, "a list of values per option")
        # each option's values, read no further than the bound allows
        lists = [list(itertools.islice(grid[n], MAX_POINTS + 1)) for n in names]
        if math.prod(len(v) for v in lists) > MAX_POINTS:
            raise MemfitError.bad_value("grid", " x ".join(str(len(v)) for v in lists),
                                        f"at most {MAX_POINTS:,} points")
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*lists)]
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise MemfitError.bad_value("grid", grid, "a mapping of option -> values or a list "
                                    "of option dicts")
    points: list[dict[str, Any]] = []
    for p in grid:
        if not isinstance(p, Mapping) or not all(isinstance(k, str) for k in p):
            raise MemfitError.bad_value("grid", p, "an option dict (option names as keys)")
        if len(points) == MAX_POINTS:
            raise MemfitError.bad_value("grid", "more points", f"at most {MAX_POINTS:,} points")
        points.append(dict(p))
    return points


def sweep(model: Any, mode: str = "infer",
          grid: Mapping[str, Sequence[Any]] | Iterable[Mapping[str, Any]] = (),
          **options: Any) -> tuple[SweepPoint, ...]:
    """``peak_bytes``, ``total_bytes`` and ``fits`` of every point of ``grid`` (see
    :func:`grid_points`), each point's options laid over ``options``; a refused point
    carries its error. ``mode``: ``infer`` or ``train``. A model that cannot be resolved, a
    bad mode or a malformed grid raise :class:`MemfitError` for the whole sweep."""
    if mode not in ("infer", "train"):
        raise MemfitError.bad_value("mode", mode, "infer, train")
    points = grid_points(grid)
    if mode == "train":
        return tuple(_train_points(model, points, options))
    spec, _, checkpoint = resolve_model_full(model)
    try:
        base = make_options(InferenceOptions, **options)
    except MemfitError:
        base = None  # every point is checked with its own options (one may fix the base)
    fast = (base is not None and checkpoint is None and base.engine == "hf")
    solved = _hf_groups(spec, base, points) if fast else {}
    out = []
    for i, point in enumerate(points):
        try:
            if i in solved:
                peak, total, fits = solved[i]
            elif fast and _POINT_FIELDS.issuperset(point):
                peak, total, fits = _hf_point(spec, base, point)
            else:
                o = make_options(InferenceOptions, **{**options, **point})
                est = estimate_inference(spec, o)
                if checkpoint is not None:
                    est = apply_checkpoint(est, spec, o, checkpoint)
                peak, total, fits = est.peak_bytes, est.total_bytes, est.fits
        except MemfitError as exc:
            out.append(SweepPoint(point, None, None, None, str(exc)))
            continue
        out.append(SweepPoint(point, peak, total, fits))
    return tuple(out)


def _hf_point(spec: Any, base: InferenceOptions,
              point: Mapping[str, Any]) -> tuple[int, int, bool | None]:
    """One hf point: the base options with the point's batch/prompt/generate (checked as
    the options class checks them, in its declaration order: the same first error), then
    :func:`memfit.engines.hf_verdict`."""
    for name in _POINT_ORDER:
        if name in point:
            _check_count(name, point[name])
    o = object.__new__(InferenceOptions)
    d = o.__dict__
    d.update(base.__dict__)
    d.update(point)
    table, key = memo_table(spec), ("layout_ok", o.tp, o.pp, o.ep)
    if key not in table:  # as estimate_inference: a valid layout is remembered per model
        _check_layout(spec, o)
        table[key] = True
    o = _default_prompt(spec, o)[0]
    return hf_verdict(spec, o)


def _with(base: InferenceOptions, **values: Any) -> InferenceOptions:
    """``base`` with ``values`` set, without re-running its checks (they were run)."""
    o = object.__new__(InferenceOptions)
    d = o.__dict__
    d.update(base.__dict__)
    d.update(values)
    return o


def _hf_groups(spec: Any, base: InferenceOptions,
               points: list[dict[str, Any]]) -> dict[int, tuple[int, int, bool | None]]:
    """The hf points answered in closed form over the batch (:mod:`memfit.sweep_hf`): the
    points that change only batch, prompt or generate, with valid values, grouped by their
    (prompt, generate); each group's peak is a polynomial in the batch on a few ranges, the
    rest as :func:`memfit.engines.hf_verdict` does per point. A group whose arithmetic cannot
    be followed exactly is left out (its points are then answered one by one)."""
    groups: dict[tuple[bool, Any, Any], list[tuple[int, int]]] = {}
    for i, point in enumerate(points):
        if not _POINT_FIELDS.issuperset(point):
            continue
        try:
            for name in _POINT_ORDER:
                if name in point:
                    _check_count(name, point[name])
        except MemfitError:
            continue
        prompt = point.get("prompt", base.prompt)
        # the default prompt object, not only its value, decides whether it may shrink
        # (default_within compares by identity): it keys the group too
        key = (prompt is _PROMPT_DEFAULT, prompt, point.get("generate", base.generate))
        groups.setdefault(key, []).append((i, point.get("batch", base.batch)))
    solved: dict[int, tuple[int, int, bool | None]] = {}
    for (_, prompt, generate), members in groups.items():
        if len(members) >= sweep_hf.POINTS_PER_RUN:  # else cheaper one by one
            solved.update(_hf_group(spec, base, prompt, generate, members))
    return solved


def _hf_group(spec: Any, base: InferenceOptions, prompt: Any, generate: int,
              members: list[tuple[int, int]]) -> dict[int, tuple[int, int, bool | None]]:
    """One (prompt, generate) group of :func:`_hf_groups` (empty when left out)."""
    batches = [b for _, b in members]
    try:
        o = _with(base, batch=batches[0], prompt=prompt, generate=generate)
        table, key = memo_table(spec), ("layout_ok", o.tp, o.pp, o.ep)
        if key not in table:
            _check_layout(spec, o)
            table[key] = True
        o = _default_prompt(spec, o)[0]
        gpu_bytes = _gpu(o)[1]
        blocked = bool(_context_blockers(spec, o))
    except Exception:  # noqa: BLE001 - answered one by one (which raises it there)
        return {}
    pieces = batch_pieces(spec, lambda b: _with(o, batch=b), min(batches),
                          max(batches), len(batches))
    if pieces is None:
        return {}
    starts = [piece[0] for piece in pieces]
    world = o.tp * o.pp
    out: dict[int, tuple[int, int, bool | None]] = {}
    for i, b in members:
        peak = value_at(pieces, starts, b)
        total = peak + sum(overhead_bytes(peak, world_size=world, engine="hf").values())
        out[i] = (peak, total,
                  None if gpu_bytes is None else (not blocked) and total <= gpu_bytes)
    return out


def _check_count(name: str, value: Any) -> None:
    """``InferenceOptions``' own check of an integer option (what ``__post_init__`` runs on
    it: the other options were checked with the base, and none of its rules joins them to
    batch, prompt or generate)."""
    lo, hi = _BOUNDS[name]
    if value is None:
        raise MemfitError.bad_value(name, value, "a value")
    if (not isinstance(value, int) or isinstance(value, bool) or value < lo or value > hi):
        raise MemfitError.bad_value(name, value, f"an integer in [{lo}, {hi}]")


_BOUNDS = {f.name: (f.metadata["min"], f.metadata["max"]) for f in fields(InferenceOptions)
           if f.name in _POINT_FIELDS}
_POINT_ORDER = tuple(_BOUNDS)  # declaration order: batch, prompt, generate


def _train_points(model: Any, points: list[dict[str, Any]],
                  options: Mapping[str, Any]) -> list[SweepPoint]:
    """Training points: what ``memfit.train`` answers, the model resolved once; the points
    that change only batch and seq grouped by seq, each group's peak a polynomial in the
    batch (:mod:`memfit.sweep_hf`), the others one by one."""
    from .training import resolve_model

    spec = resolve_model(model)[0]
    solved = _train_groups(spec, points, options)
    out = []
    for i, point in enumerate(points):
        if i in solved:
            out.append(SweepPoint(point, *solved[i]))
            continue
        try:
            est = _train_one(spec, {**options, **point})
        except MemfitError as exc:
            out.append(SweepPoint(point, None, None, None, str(exc)))
            continue
        out.append(SweepPoint(point, est.peak_bytes, est.total_bytes, est.fits))
    return out


def _train_one(spec: Any, opts: dict[str, Any]) -> Any:
    """``memfit.train`` on the resolved spec."""
    from .training import train

    return train(spec, **opts)


def _train_groups(spec: Any, points: list[dict[str, Any]], options: Mapping[str, Any]
                  ) -> dict[int, tuple[int, int, bool | None]]:
    """The training points answered in closed form over the batch, by seq."""
    from .workload import MAX_COUNT

    groups: dict[Any, list[tuple[int, int]]] = {}
    for i, point in enumerate(points):
        b = point.get("batch", options.get("batch"))
        if (not {"batch", "seq"}.issuperset(point) or type(b) is not int
                or not 1 <= b <= MAX_COUNT):
            continue
        seq = point.get("seq", options.get("seq", _NO_SEQ))
        try:  # (the default object by identity, as default_within compares it)
            groups.setdefault((seq is _SEQ_DEFAULT, type(seq), seq), []).append((i, b))
        except TypeError:  # an unhashable seq: refused one by one
            continue
    solved: dict[int, tuple[int, int, bool | None]] = {}
    for (_, _, seq), members in groups.items():
        if len(members) >= sweep_hf.POINTS_PER_RUN:  # else cheaper one by one
            solved.update(_train_group(spec, options, seq, members))
    return solved


_NO_SEQ = object()
_SEQ_DEFAULT = next(f.default for f in fields(TrainingOptions) if f.name == "seq")
_PROMPT_DEFAULT = next(f.default for f in fields(InferenceOptions) if f.name == "prompt")


def _train_group(spec: Any, options: Mapping[str, Any], seq: Any,
                 members: list[tuple[int, int]]) -> dict[int, tuple[int, int, bool | None]]:
    """One seq of :func:`_train_groups` (empty when left out): ``training._estimate``'s
    steps up to the stages' peaks on a symbolic batch, then its total and verdict."""
    from . import training as T
    from .step import Ctx, stage_run

    batches = [b for _, b in members]
    opts = {**options, "batch": batches[0]}
    if seq is not _NO_SEQ:
        opts["seq"] = seq
    try:
        opts, extra = T._split_options(opts)
        o = T._options(opts)
        if spec.learned_positions:
            o = default_within(o, "seq", spec.learned_positions, 0, "")[0]
        plan = T._plan_of(spec, o, extra)
    except Exception:  # noqa: BLE001 - answered one by one (which raises it there)
        return {}

    def peak_of(batch: Any) -> Any:
        ob = object.__new__(type(o))
        ob.__dict__.update(o.__dict__)
        ob.__dict__["batch"] = batch
        c = object.__new__(Ctx)
        c.__dict__.update(plan.ctx.__dict__)
        c.o = ob
        return max([stage_run(base, c)["peak"] for base in plan.bases])
    parts = pieces(peak_of, min(batches), max(batches), len(batches))
    if parts is None:
        return {}
    starts = [p[0] for p in parts]
    world, gpu_bytes = plan.world_size, plan.gpu_bytes
    out: dict[int, tuple[int, int, bool | None]] = {}
    for i, b in members:
        peak = value_at(parts, starts, b)
        total = peak + sum(overhead_bytes(peak, world_size=world, mode="train").values())
        out[i] = (peak, total, None if gpu_bytes is None else total <= gpu_bytes)
    return out
