"""Pictures of estimates: stacked breakdowns, sweeps against the GPU's capacity, fit layouts.

Needs the ``plot`` extra (matplotlib), imported here only when a picture is drawn, so importing
memfit stays cheap. The output format follows the file's extension: ``.png`` or ``.svg`` (text
kept as text in SVG, so labels can be searched and tested). matplotlib is driven through its
object API (``Figure``), never pyplot, so no global state or GUI backend is touched.

Three pictures, all titled with the scenario and labelled with their unit:

* :func:`plot_breakdown`: one stacked bar per scenario (the seed's order of components, the
  runtime overheads on top), the GPU's capacity as a line;
* :func:`plot_sweep`: memory against batch size or context length (:func:`sweep` computes it),
  the GPU's capacity as a horizontal line and the exact fit boundary marked;
* :func:`plot_layouts`: the parallel layouts of ``fit`` that fit, ranked by peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .compare import Scenario, estimate
from .errors import MemfitError
from .memory.breakdown import Estimate
from .report import component_label, describe_scenario, ordered_components, progress
from .units import DEFAULT_UNIT, UNITS, check_unit

__all__ = [
    "FORMATS",
    "SWEEP_AXES",
    "Sweep",
    "fit_boundary",
    "infer_gpu_counts",
    "check_output",
    "infer_layouts",
    "plot_breakdown",
    "plot_layouts",
    "plot_sweep",
    "sweep",
]

#: The file formats a picture can be written in, by extension.
FORMATS = (".png", ".svg")

#: The options a sweep may run along, per mode.
SWEEP_AXES = {"infer": ("batch", "prompt", "generate"), "train": ("batch", "seq")}

_AXIS_WORDS = {"batch": "batch size (sequences)", "prompt": "prompt length (tokens)",
               "generate": "generated tokens", "seq": "sequence length (tokens)"}

# One colour per component, the same in every picture (colour-blind-safe palette).
_COLORS = {
    "weights": "#4C72B0",
    "gradients": "#DD8452",
    "optimizer_states": "#55A868",
    "activations": "#C44E52",
    "kv_cache": "#8172B3",
    "logits": "#937860",
    "temporaries": "#DA8BC3",
    "comm_buffers": "#8C8C8C",
}
_EXTRA_COLORS = ("#64B5CD", "#CCB974", "#A1C9F4", "#FFB482", "#8DE5A1")
_OVERHEAD_COLOR = "#D9D9D9"
_CAPACITY_COLOR = "#B22222"
_MAX_SWEEP_POINTS = 24
_LABEL_BOX = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}


def _tick(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _color(name: str, extra: dict[str, str]) -> str:
    if name in _COLORS:
        return _COLORS[name]
    if name not in extra:
        extra[name] = _EXTRA_COLORS[len(extra) % len(_EXTRA_COLORS)]
    return extra[name]


def check_output(path: str | Path) -> Path:
    """``path`` as a Path, if its extension is one of :data:`FORMATS`."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise MemfitError.bad_value("output", str(path), "a file name ending in "
                                    + " or ".join(FORMATS))
    return p


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MemfitError("plot: needs the 'plot' extra (in a memfit clone: pip install -e "
                          "\".[plot]\")",
                          field="plot", value=None, allowed="matplotlib installed") from None
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path, title: str) -> Path:
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    # No date in the file: the same picture gives the same bytes (docs/img stays diff-free).
    meta: dict[str, Any] = ({"Title": title, "Creator": "memfit", "Date": None}
                            if fmt == "svg" else {"Title": title, "Software": "memfit"})
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "memfit"}):
        fig.savefig(path, format=fmt, dpi=150, metadata=meta)
    return path


def _gib(n: int | float, unit: str) -> float:
    return n / UNITS[unit]


def _capacity(ax: Any, capacity: int, gpu: str, unit: str, horizontal: bool = True) -> None:
    value = _gib(capacity, unit)
    label = f"{gpu}: {value:,.2f} {unit} usable"
    if horizontal:
        ax.axhline(value, color=_CAPACITY_COLOR, linestyle="--", linewidth=1.5, label=label)
    else:
        ax.axvline(value, color=_CAPACITY_COLOR, linestyle="--", linewidth=1.5, label=label)


def _title(models: str, mode: str, common: str) -> str:
    words = {"infer": "inference", "train": "training"}[mode]
    return f"{models}, {words}" + (f": {common}" if common else "")


# ---------------------------------------------------------------------------------------
# Breakdown bars
# ---------------------------------------------------------------------------------------

def plot_breakdown(results: Sequence[tuple[Scenario, Estimate]], path: str | Path,
                   unit: str = DEFAULT_UNIT, title: str | None = None) -> Path:
    """One stacked bar per scenario: the components at its peak in the seed's order, the
    runtime overheads on top (the bar's top is the nvidia-smi total), the GPU's capacity."""
    unit = check_unit(unit)
    out = check_output(path)
    if not results:
        raise MemfitError.bad_value("scenarios", 0, "at least one")
    first_s, first_e = results[0]
    skip = ("gpu",) + tuple(k for k in first_s.varied if k != "model")
    models = ", ".join(dict.fromkeys(e.model for _, e in results))
    title = title or _title(models, first_s.mode,
                            describe_scenario(first_s.mode, first_e.options, skip=skip))
    names = ordered_components(n for _, e in results for n in e.components)
    live = [n for n in names if any(e.components.get(n, 0) for _, e in results)]
    varied = list(first_s.varied)
    if len(varied) == 1:  # the values on the ticks, the option under the axis
        labels = [_tick(s.varied[varied[0]]) for s, _ in results]
        xlabel = "model" if varied[0] == "model" else "--" + varied[0].replace("_", "-")
    else:
        labels = [s.label for s, _ in results]
        xlabel = "scenario"
    fig = _figure(max(6.0, 1.1 * len(results) + 3.5), 5.0)
    ax = fig.add_subplot()
    xs = list(range(len(results)))
    bottom = [0.0] * len(results)
    extra: dict[str, str] = {}
    for name in live:
        vals = [_gib(e.components.get(name, 0), unit) for _, e in results]
        ax.bar(xs, vals, bottom=bottom, color=_color(name, extra), label=component_label(name),
               width=0.65)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    over = [_gib(sum(e.overheads.values()), unit) for _, e in results]
    ax.bar(xs, over, bottom=bottom, color=_OVERHEAD_COLOR, hatch="//", edgecolor="#808080",
           linewidth=0.0, label="runtime overheads", width=0.65)
    tops = [b + v for b, v in zip(bottom, over, strict=True)]
    for x, top in zip(xs, tops, strict=True):
        ax.annotate(f"{top:,.1f}", (x, top), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points", bbox=_LABEL_BOX)
    gpus = {(e.gpu, e.gpu_memory_bytes) for _, e in results if e.gpu}
    if len(gpus) == 1:
        gpu, cap = next(iter(gpus))
        if cap:
            _capacity(ax, cap, gpu, unit)
    long = max(len(t) for t in labels) > 12
    ax.set_xticks(xs, labels, rotation=25 if long else 0, ha="right" if long else "center",
                  rotation_mode="anchor")
    ax.set_xlabel(f"{xlabel}  (bar = tensors at the peak + runtime overheads = nvidia-smi total)",
                  fontsize=8)
    ax.set_ylabel(f"memory per GPU ({unit})")
    ax.set_title(title, fontsize=10, wrap=True)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out, title)


# ---------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """Estimates of one scenario along one option (``axis``), and where it stops fitting.

    ``boundary`` is the largest value of ``axis`` that fits the scenario's GPU (exact: it fits
    and one more does not), ``None`` without a GPU or when not even the smallest fits."""

    scenario: Scenario
    axis: str
    values: tuple[int, ...]
    estimates: tuple[Estimate, ...]
    boundary: int | None
    gpu: str | None
    capacity: int | None


def _fits(e: Estimate) -> bool:
    # fit's predicate (inference._fits): served as asked, the batch held at once
    return (bool(e.fits) and e.extras.get("fits_concurrently") is not False
            and e.extras.get("serves_request") is not False)


def _default_values(axis: str, boundaries: Sequence[int | None], spec_max: int) -> list[int]:
    """Powers of two from a small value to past the largest fit boundary (2x it, rounded up
    to a power of two), with each boundary and the value after it added."""
    lo = {"batch": 1, "generate": 16, "prompt": 128, "seq": 128}[axis]
    hi = {"batch": 256, "generate": 8192, "prompt": 131072, "seq": 131072}[axis]
    known = [b for b in boundaries if b is not None]
    if known:
        hi = max(lo * 8, 1 << (2 * max(known) - 1).bit_length())
    if spec_max and axis in ("prompt", "seq"):
        hi = min(hi, spec_max)
    values: list[int] = []
    v = lo
    while v <= hi and len(values) < _MAX_SWEEP_POINTS:
        values.append(v)
        v *= 2
    for b in known:
        values += [x for x in (b, b + 1) if lo <= x <= hi]
    return sorted(set(values))


def fit_boundary(s: Scenario, axis: str) -> int | None:
    """The largest value of ``axis`` at which ``s`` fits its GPU (exact: it fits, one more
    does not); None without a GPU or when not even 1 fits."""
    from .solve import largest_true
    from .workload import MAX_COUNT

    if not s.options.get("gpu"):
        return None

    def ok(v: int) -> bool:
        try:
            return _fits(estimate(replace(s, options={**s.options, axis: v})))
        except MemfitError:
            return False

    return largest_true(ok, 1, MAX_COUNT)


def sweep(scenarios: Sequence[Scenario] | Scenario, axis: str,
          values: Sequence[int] | None = None, show_progress: bool = True) -> list[Sweep]:
    """Estimate each scenario at each value of ``axis`` and find its exact fit boundary
    (:func:`fit_boundary`). Without ``values`` all scenarios share one grid: powers of two
    up to past the largest boundary, each boundary included."""
    items_in = [scenarios] if isinstance(scenarios, Scenario) else list(scenarios)
    if not items_in:
        raise MemfitError.bad_value("scenarios", 0, "at least one")
    mode = items_in[0].mode
    if axis not in SWEEP_AXES[mode]:
        raise MemfitError.bad_value("sweep", axis, ", ".join(SWEEP_AXES[mode]))
    bases = [estimate(s) for s in items_in]  # fails early, naming the scenario
    boundaries = [fit_boundary(s, axis) for s in items_in]
    spec_max = 0
    for s in items_in:
        try:
            from .catalog import resolve_model

            spec = resolve_model(s.model)[0]
            m = spec.learned_positions or spec.max_position_embeddings
            spec_max = max(spec_max, m)
        except MemfitError:
            pass
    xs = list(values) if values else _default_values(axis, boundaries, spec_max)
    out = []
    jobs: Any = [(i, v) for i in range(len(items_in)) for v in xs]
    if show_progress:
        jobs = progress(jobs, f"sweeping {axis} over {len(xs)} values")
    got: dict[int, list[tuple[int, Estimate]]] = {i: [] for i in range(len(items_in))}
    for i, v in jobs:
        try:
            got[i].append((v, estimate(replace(items_in[i], options={**items_in[i].options,
                                                                      axis: v}))))
        except MemfitError:
            if values:  # the user asked for this value: say why it is impossible
                raise
    for i, s in enumerate(items_in):
        if not got[i]:
            raise MemfitError.bad_value(axis, xs, "values for which the scenario is valid")
        out.append(Sweep(scenario=s, axis=axis, values=tuple(v for v, _ in got[i]),
                         estimates=tuple(e for _, e in got[i]), boundary=boundaries[i],
                         gpu=bases[i].gpu, capacity=bases[i].gpu_memory_bytes))
    return out


def _geometric(values: Sequence[int]) -> bool:
    return len(values) > 2 and values[0] > 0 and values[-1] / values[0] >= 16


def plot_sweep(sweeps: Sequence[Sweep], path: str | Path, unit: str = DEFAULT_UNIT,
               title: str | None = None) -> Path:
    """Memory against the sweep's axis. One sweep: the components stacked, the total on top;
    several (other options varied): one total curve each. The GPU's capacity is a horizontal
    line; each fit boundary a vertical line with its value."""
    unit = check_unit(unit)
    out = check_output(path)
    if not sweeps:
        raise MemfitError.bad_value("sweeps", 0, "at least one")
    axis = sweeps[0].axis
    first = sweeps[0]
    skip = ("gpu", axis) + tuple(k for k in first.scenario.varied if k != "model")
    models = ", ".join(dict.fromkeys(sw.estimates[0].model for sw in sweeps))
    common = describe_scenario(first.scenario.mode, first.estimates[0].options, skip=skip)
    title = title or (_title(models, first.scenario.mode, common) + f"; memory vs {axis}"
                      + (" (nvidia-smi totals)" if len(sweeps) > 1 else ""))
    fig = _figure(9.0, 5.2)
    ax = fig.add_subplot()
    extra: dict[str, str] = {}
    if len(sweeps) == 1:
        xs = list(first.values)
        names = ordered_components(n for e in first.estimates for n in e.components)
        live = [n for n in names if any(e.components.get(n, 0) for e in first.estimates)]
        layers = [[_gib(e.components.get(n, 0), unit) for e in first.estimates] for n in live]
        layers.append([_gib(sum(e.overheads.values()), unit) for e in first.estimates])
        colors = [_color(n, extra) for n in live] + [_OVERHEAD_COLOR]
        ax.stackplot(xs, *layers, labels=[component_label(n) for n in live]
                     + ["runtime overheads"], colors=colors, alpha=0.9)
        ax.plot(xs, [_gib(e.total_bytes, unit) for e in first.estimates], color="black",
                linewidth=1.2, marker="o", markersize=3, label="total (nvidia-smi)")
        if first.boundary is not None and xs[0] <= first.boundary <= xs[-1]:
            ax.axvline(first.boundary, color="#333333", linestyle=":", linewidth=1.2)
            ax.annotate(f"largest {axis} that fits: {first.boundary:,}",
                        (first.boundary, 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, ha="right", va="bottom", fontsize=8, xytext=(-3, 0),
                        textcoords="offset points", bbox=_LABEL_BOX)
    else:
        for sw in sweeps:
            fit = ""
            if sw.gpu:
                fit = (f"; fits up to {axis} {sw.boundary:,}" if sw.boundary is not None
                       else "; never fits")
            line = ax.plot(list(sw.values), [_gib(e.total_bytes, unit) for e in sw.estimates],
                           marker="o", markersize=3, label=f"{sw.scenario.label}{fit}")[0]
            if sw.boundary is not None and sw.values[0] <= sw.boundary <= sw.values[-1]:
                ax.axvline(sw.boundary, color=line.get_color(), linestyle=":", linewidth=1.2)
    caps = {(sw.gpu, sw.capacity) for sw in sweeps if sw.gpu and sw.capacity}
    for gpu, cap in caps:
        _capacity(ax, cap, gpu, unit)
    if not any(sw.gpu for sw in sweeps):
        pass
    elif all(sw.boundary is None for sw in sweeps):
        ax.text(0.01, 0.98, f"nothing fits: not even {axis} = {first.values[0]:,}",
                transform=ax.transAxes, ha="left", va="top", fontsize=9,
                color=_CAPACITY_COLOR)
    if _geometric(first.values):
        ax.set_xscale("log", base=2)
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v):,}"))
    ax.set_xlabel(_AXIS_WORDS.get(axis, axis))
    ax.set_ylabel(f"memory per GPU ({unit})")
    ax.set_title(title, fontsize=10, wrap=True)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out, title)


# ---------------------------------------------------------------------------------------
# Layouts of fit
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    label: str
    peak_bytes: int
    total_bytes: int
    fits: bool


def infer_layouts(s: Scenario, gpus: int | Sequence[int]) -> list[tuple[str, Estimate]]:
    """Every valid ``tp x pp`` split of each GPU count in ``gpus``, estimated (invalid splits,
    such as a TP degree that does not divide the heads, are left out)."""
    counts = [gpus] if isinstance(gpus, int) else list(gpus)
    out = []
    for n in counts:
        for tp in range(n, 0, -1):
            if n % tp:
                continue
            try:
                e = estimate(replace(s, options={**s.options, "tp": tp, "pp": n // tp}))
            except MemfitError:
                continue
            out.append((f"{n} GPU{'s' if n > 1 else ''}: tp={tp} x pp={n // tp}", e))
    return out


def infer_gpu_counts(min_gpus: int | None) -> list[int]:
    """The GPU counts worth drawing for inference: powers of two up to twice the fewest that
    fit (so the picture shows what does not fit too), and that fewest."""
    top = 8 if min_gpus is None else max(2, 1 << (2 * min_gpus - 1).bit_length())
    counts = {1 << k for k in range(top.bit_length()) if 1 << k <= top}
    if min_gpus is not None:
        counts.add(min_gpus)
    return sorted(counts)


def _infer_layouts_head(result: tuple[Any, Any, Any]
                        ) -> tuple[list[_Layout], str | None, int | None, str]:
    """Inference ``(scenario, gpus, items)``: the layouts, GPU name, capacity and title head."""
    s, gpus, items = result
    if not items:
        raise MemfitError.bad_value("gpus", gpus, "a GPU count with a valid tp x pp split")
    if not isinstance(gpus, int):
        gpus = "1 to " + str(max(gpus))
    e0 = items[0][1]
    layouts = [_Layout(lab, e.peak_bytes, e.total_bytes, _fits(e)) for lab, e in items]
    gpu, cap, model = e0.gpu, e0.gpu_memory_bytes, e0.model
    common = describe_scenario("infer", e0.options, skip=("gpu", "tp", "pp"))
    return layouts, gpu, cap, f"{model}, inference on {gpus} x {gpu}: {common}"


def _train_layout_label(x: Any) -> str:
    """One training layout's bar label: its degrees, sharding, checkpointing and offload."""
    parts = [f"dp={x.dp}"] + [f"{k}={getattr(x, k)}" for k in ("tp", "pp", "cp", "ep")
                              if getattr(x, k) > 1]
    shard = f"FSDP {x.fsdp}" if x.fsdp else (f"ZeRO-{x.zero}" if x.zero else "no sharding")
    extras = []
    if x.checkpointing != "none":
        extras.append(f"ckpt {x.checkpointing}")
    if x.offload != "none":
        extras.append(f"offload {x.offload}")
    return " ".join(parts) + f", {shard}" + (", " + ", ".join(extras) if extras else "")


def _train_layouts_head(r: Any, scenario: Scenario | None
                        ) -> tuple[list[_Layout], str | None, int | None, str]:
    """A training fit result: the layouts, GPU name, capacity and title head."""
    layouts = [_Layout(_train_layout_label(x), x.peak_bytes, x.total_bytes, True)
               for x in r.layouts]
    gpu, cap, model = r.gpu, r.gpu_memory_bytes, r.model
    common = ""
    layout_keys = ("gpu", "dp", "tp", "pp", "cp", "ep", "zero", "fsdp", "checkpointing",
                   "offload", "sp", "microbatches")
    if scenario is not None:
        from dataclasses import asdict

        from .workload import TrainingOptions

        common = describe_scenario("train", {**asdict(TrainingOptions()), **scenario.options},
                                   skip=layout_keys)
    elif r.estimate is not None:
        common = describe_scenario("train", r.estimate.options,
                                   skip=layout_keys + ("batch",))
    head = f"{model}, training on {r.gpus} x {gpu}" + (f": {common}" if common else "")
    if not layouts:
        raise MemfitError(f"plot: no layout of {r.gpus} GPUs fits {model} on {gpu}; "
                          "allowed: a scenario with at least one layout that fits",
                          field="gpus", value=r.gpus, allowed="more GPUs")
    return layouts, gpu, cap, head


def _draw_layouts(layouts: list[_Layout], unit: str, gpu: str | None, cap: int | None,
                  title: str) -> Any:
    """The ranked horizontal bars of ``layouts`` (sorted by peak in place), as a figure."""
    layouts.sort(key=lambda x: x.peak_bytes)
    n = len(layouts)
    fig = _figure(9.5, max(3.0, 0.38 * n + 1.8))
    ax = fig.add_subplot()
    ys = list(range(n))
    peaks = [_gib(x.peak_bytes, unit) for x in layouts]
    overs = [_gib(x.total_bytes - x.peak_bytes, unit) for x in layouts]
    colors = [_COLORS["weights"] if x.fits else "#BBBBBB" for x in layouts]
    ax.barh(ys, peaks, color=colors, label="peak (tensors)", height=0.6)
    ax.barh(ys, overs, left=peaks, color=_OVERHEAD_COLOR, hatch="//", edgecolor="#808080",
            linewidth=0.0, label="runtime overheads (to the nvidia-smi total)", height=0.6)
    for y, x in zip(ys, layouts, strict=True):
        total = _gib(x.total_bytes, unit)
        ax.annotate(f"{total:,.1f}" + ("" if x.fits else " (does not fit)"), (total, y),
                    va="center", ha="left", fontsize=7, xytext=(3, 0),
                    textcoords="offset points", bbox=_LABEL_BOX)
    if gpu and cap:
        _capacity(ax, cap, gpu, unit, horizontal=False)
    ax.set_yticks(ys, [x.label for x in layouts], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"memory per GPU ({unit})")
    ax.set_title(title, fontsize=10, wrap=True)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def plot_layouts(result: Any, path: str | Path, unit: str = DEFAULT_UNIT,
                 title: str | None = None, scenario: Scenario | None = None) -> Path:
    """Horizontal bars of layouts ranked by peak, lowest first: the peak (tensors) solid, the
    runtime overheads on top of it (the nvidia-smi total), the GPU's capacity as a line.

    ``result``: a :class:`memfit.training.FitResult` (its ``layouts``, all of which fit), or
    a tuple ``(scenario, gpus, [(label, estimate), ...])`` from :func:`infer_layouts`.
    ``scenario`` (training) describes the workload in the title."""
    unit = check_unit(unit)
    out = check_output(path)
    if isinstance(result, tuple):
        layouts, gpu, cap, head = _infer_layouts_head(result)
    else:
        layouts, gpu, cap, head = _train_layouts_head(result, scenario)
    title = title or f"{head}; layouts ranked by peak"
    fig = _draw_layouts(layouts, unit, gpu, cap, title)
    return _save(fig, out, title)
