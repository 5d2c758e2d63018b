"""A generic estimate: the JSON shape of ``memfit infer/train --json``, derived by tracing.

Pure Python (no torch): a cached answer is read, built and printed without the tracer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenericEstimate"]


@dataclass(frozen=True)
class GenericEstimate:
    """Peak memory of one scenario for a model memfit has no analytical model of.

    ``peak_bytes`` and ``components`` come from the tracer (run at reduced depth and
    extrapolated: ``traced_depths``); ``total_bytes`` adds memfit's runtime overheads
    (``overheads``: CUDA context, allocator slack, cuBLAS workspace), as for any estimate.
    """

    model: str
    model_type: str
    model_class: str
    workload: str  # "infer" or "train"
    peak_bytes: int
    peak_phase: str
    components: Mapping[str, int]
    phase_peaks: Mapping[str, int]
    overheads: Mapping[str, int]
    num_layers: int
    traced_depths: tuple[int, ...]  # blocks in each traced run (the full depth when exact)
    extrapolated: bool
    cached: bool
    seconds: float
    gpu: str | None = None
    gpu_bytes: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return self.peak_bytes + sum(self.overheads.values())

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_bytes is None else self.total_bytes <= self.gpu_bytes

    @property
    def method(self) -> str:
        return "traced" if not self.extrapolated else "traced-extrapolated"

    def to_dict(self) -> dict[str, Any]:
        """The contract's keys first, then how the numbers were derived."""
        return {
            "peak_bytes": self.peak_bytes,
            "total_bytes": self.total_bytes,
            "components": dict(self.components),
            "fits": self.fits,
            "gpu": self.gpu,
            "model": self.model,
            "model_type": self.model_type,
            "workload": self.workload,
            "method": self.method,
            "model_class": self.model_class,
            "peak_phase": self.peak_phase,
            "phase_peaks": dict(self.phase_peaks),
            "overheads": dict(self.overheads),
            "num_layers": self.num_layers,
            "traced_depths": list(self.traced_depths),
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }

    def render(self, units: str = "GiB") -> str:
        """Plain text for the CLI: the derivation first, then the parts."""
        from ..units import format_bytes

        def fmt(n: int) -> str:
            return format_bytes(n, units)

        depth = ("the full depth" if not self.extrapolated else
                 f"{', '.join(map(str, self.traced_depths))} blocks, extrapolated to "
                 f"{self.num_layers}")
        lines = [f"{self.model} ({self.model_type}) {self.workload}: derived by tracing "
                 f"transformers' {self.model_class} on fake tensors ({depth}); memfit has "
                 "no analytical model of this model_type",
                 f"peak (tensors): {fmt(self.peak_bytes)} in phase {self.peak_phase}",
                 f"total (+ runtime overheads): {fmt(self.total_bytes)}"]
        if self.gpu is not None:
            lines.append(f"fits {self.gpu}: {'yes' if self.fits else 'no'}")
        width = max(len(k) for k in [*self.components, *self.overheads])
        for k, v in [*self.components.items(), *self.overheads.items()]:
            lines.append(f"  {k:<{width}}  {fmt(v):>10}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.cached:
            lines.append("note: read from the trace cache (MEMFIT_CACHE_DIR)")
        return "\n".join(lines)
