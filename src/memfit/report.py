"""Text views of an :class:`~memfit.memory.breakdown.Estimate`: the table, the timeline, the
fit verdict, the assumptions and the ``--explain`` derivations. Pure functions returning str;
only the CLI prints.
"""

from __future__ import annotations

from typing import Any, Sequence

from .memory.breakdown import REQUIRED_COMPONENTS, Estimate
from .units import UNITS, check_unit

__all__ = ["render_estimate", "render_explain", "table"]

# The seed's order: weights, gradients, optimizer state, activations, KV cache, then the rest.
ORDER = REQUIRED_COMPONENTS


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


def _num(n_bytes: int, unit: str) -> str:
    return f"{n_bytes / UNITS[unit]:,.2f}"


def render_estimate(est: Estimate, unit: str = "GiB") -> str:
    """The per-GPU table in the seed's order, phases, verdict and assumptions."""
    unit = check_unit(unit)
    comps = dict(est.components)
    peak = est.peak_bytes
    names = [n for n in ORDER] + sorted(k for k in comps if k not in ORDER)
    rows = [[n, _num(comps.get(n, 0), unit), f"{100 * comps.get(n, 0) / peak:.1f}%" if peak else "-"]
            for n in names]
    rows.append(["= peak (tensors)", _num(peak, unit), "100.0%"])
    for name, value in est.overheads.items():
        rows.append([f"+ {name}", _num(value, unit), ""])
    rows.append(["= total (nvidia-smi)", _num(est.total_bytes, unit), ""])
    title = (f"{est.model} {est.mode}: memory per GPU, most loaded GPU, in {unit} "
             f"(1 {unit} = {UNITS[unit]:,} bytes)")
    out = [title, table(["component", unit, "share of peak"], rows, right=(1, 2))]
    if len(est.phases) > 1:
        out.append("")
        prow = [[p.name, _num(p.peak_bytes, unit),
                 "<- peak" if p is est.peak_phase else ""] for p in est.phases]
        out.append(table(["phase", f"peak {unit}", ""], prow, right=(1,)))
    if est.gpu is not None and est.gpu_memory_bytes is not None:
        head = est.headroom_bytes or 0
        verdict = "FITS" if est.fits else "DOES NOT FIT"
        out.append("")
        out.append(f"{verdict} on {est.gpu} ({_num(est.gpu_memory_bytes, unit)} {unit}): "
                   f"headroom {_num(head, unit)} {unit}")
    if est.host_bytes:
        out.append(f"host (CPU) memory: {_num(est.host_bytes, unit)} {unit}")
    for key, value in est.extras.items():
        out.append(f"{key}: {value}")
    if est.assumptions:
        out.append("")
        out.append("assumptions: " + "; ".join(f"{k}={v}" for k, v in est.assumptions.items()))
    return "\n".join(out)


def render_explain(est: Estimate, unit: str = "GiB") -> str:
    """Every term: formula in symbols, the numbers substituted, the result and its source."""
    unit = check_unit(unit)
    out = [f"How each number of {est.model} {est.mode} was computed ({unit}):"]
    for t in est.terms:
        out.append("")
        out.append(f"{t.name} = {t.formula}")
        out.append(f"  = {t.substituted}")
        out.append(f"  = {t.bytes:,} bytes = {_num(t.bytes, unit)} {unit}")
        out.append(f"  source: {t.source}")
        if t.note:
            out.append(f"  note: {t.note}")
    return "\n".join(out)
