"""Generic inference and training estimates: trace reduced depths, extrapolate, cache.

The plan (:mod:`memfit.generic.depth`) names the runs; each run is one trace
(:func:`memfit.trace.trace_inference` / :func:`~memfit.trace.trace_training`) of a config
holding only its blocks, at the user's batch and sequence, summarised and cached
(:mod:`memfit.generic.cache`). Phase peaks and the peak's components are extrapolated
linearly in the number of blocks of each kind. The components are extrapolated only from runs
whose peak falls in the phase that peaks at full depth (then they sum to the peak exactly);
when the reduced runs peak elsewhere (a short model peaks in its forward, a deep one in the
optimizer step), a uniform model is traced again at the depths where the full model's peak
phase already wins, and any other model at full depth.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from . import cache
from .bounds import MAX_FULL_TRACE_BLOCKS
from .depth import Plan
from .result import GenericEstimate

__all__ = ["estimate"]

Summary = dict[str, Any]


def _versions() -> dict[str, str]:
    """Versions that change traced numbers (read without importing torch)."""
    out = {}
    for dist in ("torch", "transformers", "memfit"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def _plan(config: Mapping[str, Any], versions: Mapping[str, str]) -> tuple[Plan, bool]:
    key = cache.key_of("plan", dict(config), versions)
    hit = cache.get(key)
    if hit is not None:
        return Plan.from_dict(hit), True
    from .depth import make_plan

    plan = make_plan(config)
    cache.put(key, plan.to_dict())
    return plan, False


def _trace(config: Mapping[str, Any], indices: tuple[int, ...] | None, options: Any,
           workload: str) -> Summary:
    """One trace of ``config`` reduced to the blocks ``indices`` (None: all of them)."""
    from ..trace import trace_inference, trace_training
    from ..trace.build import MODEL_CLASS
    from .build import load_hf_config, model_class, refusal
    from .depth import reduced_config

    config = copy.deepcopy(dict(config))  # transformers rewrites nested dicts (rope_scaling)
    hf_cfg = load_hf_config(config)
    cls, auto = model_class(hf_cfg, config)
    if workload == "infer" and not auto:
        raise MemfitError.bad_value(
            "model", f"{hf_cfg.model_type} ({cls.__name__})",
            "a model that generates (causal LM or image-text-to-text) for a generic inference "
            "trace; `memfit params` and `memfit train` work for this one")
    if indices is not None:
        config = reduced_config(config, hf_cfg.get_text_config(), indices)

    class _Builder:  # what trace.build.build_model calls: the config's own class
        @staticmethod
        def from_config(cfg: Any, **kwargs: Any) -> Any:
            return cls._from_config(cfg, **kwargs)

    token = MODEL_CLASS.set(_Builder)
    try:
        run = trace_inference if workload == "infer" else trace_training
        r = run(copy.deepcopy(config), options)
    except Exception as exc:  # noqa: BLE001 - model code the tracer cannot run: one line
        raise refusal(exc, hf_cfg.model_type, f"a model the tracer runs ({cls.__name__})") \
            from None
    finally:
        MODEL_CLASS.reset(token)
    return {"peak": r.peak_bytes, "peak_phase": r.peak_phase,
            "phase_peaks": dict(r.phase_peaks), "components": dict(r.components),
            "notes": list(r.notes), "blocks": None if indices is None else len(indices),
            "model_class": cls.__name__, "model_type": hf_cfg.model_type}


class _Runner:
    """Cached traces of one (config, options, workload)."""

    def __init__(self, config: Mapping[str, Any], options: Any, workload: str,
                 versions: Mapping[str, str]) -> None:
        self.config, self.options, self.workload = config, options, workload
        # the key's text now: later traces must not change it
        self.base_key = cache.key_of(dict(config), dataclasses.asdict(options), workload,
                                     dict(versions))
        self.all_cached = True

    def __call__(self, indices: tuple[int, ...] | None) -> Summary:
        key = cache.key_of("run", self.base_key, None if indices is None else list(indices))
        hit = cache.get(key)
        if hit is not None:
            return hit
        self.all_cached = False
        out = _trace(self.config, indices, self.options, self.workload)
        cache.put(key, out)
        return out


def _linear(plan: Plan, runs: Mapping[str, Summary],
            get: Callable[[Summary], int]) -> int:
    """``P(base) + sum_t (n_t - 2) (P(base + t) - P(base))`` (see :mod:`.depth`)."""
    base = get(runs["base"])
    value = base
    for kind, n in plan.counts.items():
        if n >= 3:
            value += (n - 2) * (get(runs[f"kind{kind}"]) - base)
    return value


def _extrapolate(plan: Plan, runs: Mapping[str, Summary]) -> tuple[dict[str, int], str]:
    def phase_of(p: str) -> Callable[[Summary], int]:
        return lambda s: int(s["phase_peaks"].get(p, 0))

    phases = {p: _linear(plan, runs, phase_of(p)) for p in runs["base"]["phase_peaks"]}
    return phases, max(phases, key=lambda p: phases[p])


def _components(plan: Plan, runs: Mapping[str, Summary], phase: str) -> dict[str, int] | None:
    if any(r["peak_phase"] != phase for r in runs.values()):
        return None
    def part(c: str) -> Callable[[Summary], int]:
        return lambda s: int(s["components"].get(c, 0))

    return {c: _linear(plan, runs, part(c)) for c in runs["base"]["components"]}


def _uniform_rerun(plan: Plan, runner: _Runner, phases_at: Callable[[int], dict[str, int]],
                   phase: str) -> tuple[dict[str, int] | None, tuple[int, ...]]:
    """Components of a one-kind model from two depths where ``phase`` already peaks."""
    n = plan.num_layers
    m = next((m for m in range(3, n) if max(phases_at(m), key=lambda p: phases_at(m)[p])
              == phase), n)
    if m + 1 + 2 >= n:
        return None, ()
    lo, hi = runner(tuple(range(m))), runner(tuple(range(m + 1)))
    if lo["peak_phase"] != phase or hi["peak_phase"] != phase:
        return None, ()
    comps = {c: lo["components"].get(c, 0) + (n - m) * (hi["components"].get(c, 0)
                                                        - lo["components"].get(c, 0))
             for c in lo["components"]}
    return comps, (m, m + 1)


def _measure(plan: Plan, runner: _Runner) -> tuple[Summary, tuple[int, ...], bool]:
    """The full-depth summary: extrapolated when the plan allows, else traced whole."""
    if plan.reduced:
        runs = {name: runner(idx) for name, idx in plan.runs.items()}
        depths = tuple(len(idx or ()) for idx in plan.runs.values())
        phases, phase = _extrapolate(plan, runs)
        comps = _components(plan, runs, phase)
        if comps is None and len(plan.counts) == 1:
            base, step = runs["base"], runs["kind0"]

            def phases_at(m: int) -> dict[str, int]:
                return {p: base["phase_peaks"][p] + (m - 2) * (step["phase_peaks"][p]
                                                               - base["phase_peaks"][p])
                        for p in base["phase_peaks"]}
            comps, more = _uniform_rerun(plan, runner, phases_at, phase)
            depths += more
        if comps is not None and sum(comps.values()) == phases[phase]:
            notes = runs["base"]["notes"]
            return ({"peak": phases[phase], "peak_phase": phase, "phase_peaks": phases,
                     "components": comps, "notes": notes,
                     "model_class": runs["base"]["model_class"],
                     "model_type": runs["base"]["model_type"]}, depths, True)
    if plan.num_layers > MAX_FULL_TRACE_BLOCKS:
        raise MemfitError.bad_value(
            "num_hidden_layers", plan.num_layers,
            f"at most {MAX_FULL_TRACE_BLOCKS} blocks for a full-depth trace on the generic path "
            "(reduced depths do not rebuild this model's blocks, so it is traced whole)")
    full = runner(None)
    return full, (plan.num_layers,), False


def estimate(config: Mapping[str, Any], options: Any, workload: str,
             name: str = "model") -> GenericEstimate:
    """The generic estimate of ``workload`` ("infer" or "train") for ``config``."""
    from ..memory.overhead import overhead_terms

    started = time.perf_counter()
    gpu = getattr(options, "gpu", None)
    gpu_bytes = None
    if gpu is not None:
        from ..hardware import get_gpu

        gpu_bytes = get_gpu(gpu).usable_bytes
    options = dataclasses.replace(options, gpu=None)
    versions = _versions()
    config = copy.deepcopy(dict(config))
    plan, plan_cached = _plan(config, versions)
    runner = _Runner(config, options, workload, versions)
    summary, depths, extrapolated = _measure(plan, runner)
    world = getattr(options, "dp", 1)
    overheads = {t.name: t.bytes for t in overhead_terms(summary["peak"], world_size=world,
                                                         mode=workload)}
    how = (f"traced {' / '.join(map(str, depths))} of {plan.num_layers} blocks and "
           "extrapolated linearly per block kind" if extrapolated
           else f"traced at the full depth ({plan.num_layers} blocks)")
    notes = (f"derived by tracing transformers' {summary['model_class']} (model_type "
             f"{summary['model_type']!r}) on fake tensors: {how}", *summary["notes"])
    return GenericEstimate(
        model=name, model_type=summary["model_type"], model_class=summary["model_class"],
        workload=workload, peak_bytes=summary["peak"], peak_phase=summary["peak_phase"],
        components=summary["components"], phase_peaks=summary["phase_peaks"],
        overheads=overheads, num_layers=plan.num_layers, traced_depths=depths,
        extrapolated=extrapolated, cached=plan_cached and runner.all_cached,
        seconds=time.perf_counter() - started, gpu=gpu, gpu_bytes=gpu_bytes, notes=notes)
