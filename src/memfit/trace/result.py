"""What one trace measured: an immutable result with the same JSON shape as an estimate.

Pure Python (no torch), so results can be read, compared and serialised without the
``trace`` extra installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMPONENTS", "PHASES", "TraceResult"]

#: The component keys every result carries (0 where they do not apply), in report order.
#: ``logits`` and ``temporaries`` are the tracer's extra keys (see ``docs/tracer.md``):
#: ``logits`` is the storage of the model output's ``.logits`` tensor; ``temporaries`` are the
#: untagged tensors the optimizer step allocates (foreach scratch lists, master-weight casts).
COMPONENTS = ("weights", "gradients", "optimizer_states", "activations", "kv_cache", "logits",
              "temporaries")

#: Phase names, in the order a run goes through them.
PHASES = ("load", "prefill", "decode", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class TraceResult:
    """Peak memory of PyTorch tensors over one traced scenario.

    ``peak_bytes`` is the largest sum of live storage sizes (``UntypedStorage.nbytes()``),
    what ``torch.cuda.max_memory_allocated()`` reports less the allocator's rounding;
    ``peak_bytes_rounded`` rounds each storage up to the CUDA caching allocator's 512-byte
    blocks first (what ``max_memory_allocated`` itself counts). ``components`` splits the
    tensors live at the ``peak_bytes`` moment and sums to ``peak_bytes``.
    """

    workload: str  # "infer" or "train"
    peak_bytes: int
    peak_bytes_rounded: int
    peak_phase: str
    components: Mapping[str, int]
    phase_peaks: Mapping[str, int]
    seconds: float
    versions: Mapping[str, str]
    scenario: Mapping[str, Any]
    device_kind: str = "fake"
    ops: int = 0  # ATen ops dispatched while tracing
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        """The tracer sees tensors only: runtime overheads are added by the estimator."""
        return self.peak_bytes

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``memfit trace --json`` (the contract's keys first)."""
        return {
            "peak_bytes": self.peak_bytes,
            "total_bytes": self.total_bytes,
            "components": dict(self.components),
            "fits": None,
            "peak_bytes_rounded": self.peak_bytes_rounded,
            "peak_phase": self.peak_phase,
            "phase_peaks": dict(self.phase_peaks),
            "workload": self.workload,
            "scenario": dict(self.scenario),
            "device_kind": self.device_kind,
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "versions": dict(self.versions),
            "notes": list(self.notes),
        }
