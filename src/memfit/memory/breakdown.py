"""The result of an estimate: named parts per phase, the peak, and how each number was made.

An estimate is a timeline of phases (inference: load, prefill, decode; training: forward,
backward, optimizer). Each phase lists what is live at its own peak as named components in
bytes; the estimate's peak is the largest phase. Every number comes with a :class:`Term`
that states its formula in symbols, the same formula with the numbers substituted, and its
source, so ``--explain`` can show how to redo it by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Term", "LazyTerms", "Phase", "Estimate", "REQUIRED_COMPONENTS", "freeze"]

# The contract's components: always present in ``components`` (0 where they do not apply).
REQUIRED_COMPONENTS = ("weights", "gradients", "optimizer_states", "activations", "kv_cache")


def freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of ``mapping`` (results are immutable)."""
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Term:
    """One named number and its derivation."""

    name: str  # e.g. "kv_cache"
    bytes: int
    formula: str  # in symbols: "2 * L * a_kv * d * (P + G) * B * b_kv"
    substituted: str  # the same with numbers: "2 * 32 * 8 * 128 * 2048 * 1 * 2"
    source: str  # paper or framework file
    note: str = ""  # e.g. where the seed's rule of thumb differs and why

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.bytes, "formula": self.formula,
                "substituted": self.substituted, "source": self.source, "note": self.note}


class LazyTerms(Sequence[Term]):
    """A tuple of terms built on first use: formatting the derivations costs more than the
    arithmetic, and sweeps and solvers never read them. Compares equal to the tuple, and
    pickles (and copies) as one."""

    __slots__ = ("_make", "_terms")

    def __init__(self, make: Callable[[], Iterable[Term]]) -> None:
        self._make = make
        self._terms: tuple[Term, ...] | None = None

    def _get(self) -> tuple[Term, ...]:
        if self._terms is None:
            self._terms = tuple(self._make())
        return self._terms

    def __getitem__(self, index: Any) -> Any:
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[Term]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyTerms):
            other = other._get()
        if not isinstance(other, tuple):
            return NotImplemented
        return self._get() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._get())

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (self._get(),))


@dataclass(frozen=True, init=False)
class Phase:
    """What is live at one phase's own peak, by component (bytes)."""

    name: str
    components: Mapping[str, int]

    def __init__(self, name: str, components: Mapping[str, int]) -> None:
        # the generated frozen __init__ costs an object.__setattr__ per field; an estimate
        # builds three or more phases
        d = self.__dict__
        d["name"] = name
        d["components"] = components

    @property
    def peak_bytes(self) -> int:
        return sum(self.components.values())


_NO_MAPPING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, init=False)
class Estimate:
    """Per-GPU memory of one scenario on its most loaded GPU.

    ``peak_bytes`` is what ``torch.cuda.max_memory_allocated()`` would report; ``total_bytes``
    adds the runtime overheads outside tensors (``overheads``), what ``nvidia-smi`` would show.
    ``components`` is the peak phase's breakdown and sums to ``peak_bytes``.
    """

    mode: str  # "infer" or "train"
    model: str
    options: Mapping[str, Any]
    phases: tuple[Phase, ...]
    overheads: Mapping[str, int]
    terms: Sequence[Term] = ()  # a tuple, or LazyTerms (built when first read)
    assumptions: Mapping[str, Any] = field(default_factory=dict)
    gpu: str | None = None
    gpu_memory_bytes: int | None = None
    host_bytes: int = 0  # CPU memory used by offload (ZeRO-Offload, llama.cpp layers on CPU)
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, mode: str, model: str, options: Mapping[str, Any],
                 phases: tuple[Phase, ...], overheads: Mapping[str, int],
                 terms: Sequence[Term] = (), assumptions: Mapping[str, Any] = _NO_MAPPING,
                 gpu: str | None = None, gpu_memory_bytes: int | None = None,
                 host_bytes: int = 0, extras: Mapping[str, Any] = _NO_MAPPING) -> None:
        # written out rather than generated: the frozen dataclass's __init__ sets each field
        # through object.__setattr__, a few microseconds per estimate; the mappings are
        # frozen copies (results are immutable)
        if __debug__:
            assert phases, "an estimate has at least one phase"
            for phase in phases:
                for v in phase.components.values():
                    assert isinstance(v, int) and v >= 0, phases
        d = self.__dict__
        d["mode"] = mode
        d["model"] = model
        d["options"] = MappingProxyType(dict(options))
        d["phases"] = phases
        d["overheads"] = MappingProxyType(dict(overheads))
        d["terms"] = terms
        d["assumptions"] = MappingProxyType(dict(assumptions))
        d["gpu"] = gpu
        d["gpu_memory_bytes"] = gpu_memory_bytes
        d["host_bytes"] = host_bytes
        d["extras"] = MappingProxyType(dict(extras))

    @property
    def peak_phase(self) -> Phase:
        """The phase with the largest peak (the first one on a tie)."""
        return max(self.phases, key=lambda p: p.peak_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak_phase.peak_bytes

    @property
    def components(self) -> Mapping[str, int]:
        out = {name: 0 for name in REQUIRED_COMPONENTS}
        out.update(self.peak_phase.components)
        return freeze(out)

    @property
    def total_bytes(self) -> int:
        return self.peak_bytes + sum(self.overheads.values())

    @property
    def fits(self) -> bool | None:
        """Whether ``total_bytes`` fits the GPU; None without one. An engine's own refusals
        (``extras["blockers"]``: vLLM not starting, a context beyond the model's limit) make
        it False whatever the bytes."""
        if self.gpu_memory_bytes is None:
            return None
        if self.extras.get("blockers"):
            return False
        return self.total_bytes <= self.gpu_memory_bytes

    @property
    def headroom_bytes(self) -> int | None:
        if self.gpu_memory_bytes is None:
            return None
        return self.gpu_memory_bytes - self.total_bytes

    def term(self, name: str) -> Term | None:
        return next((t for t in self.terms if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON: peak_bytes, total_bytes, components, fits, and the details."""
        return {
            "mode": self.mode,
            "model": self.model,
            "peak_bytes": self.peak_bytes,
            "total_bytes": self.total_bytes,
            "components": dict(self.components),
            "fits": self.fits,
            "peak_phase": self.peak_phase.name,
            "phases": {p.name: {"peak_bytes": p.peak_bytes, "components": dict(p.components)}
                       for p in self.phases},
            "overheads": dict(self.overheads),
            "gpu": self.gpu,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "headroom_bytes": self.headroom_bytes,
            "host_bytes": self.host_bytes,
            "options": dict(self.options),
            "assumptions": dict(self.assumptions),
            "extras": dict(self.extras),
            "terms": [t.to_dict() for t in self.terms],
        }
