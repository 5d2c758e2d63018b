"""The memory ledger: a dispatch mode that counts every tensor storage while it is alive.

After each ATen op, every output whose *storage* is new is added to the live total with its
``nbytes`` (a view shares its base's storage and is counted once). A weakref callback on the
``UntypedStorage`` object removes it again: PyTorch keeps one Python object per storage for
as long as the storage lives (PyObject preservation), so the callback fires exactly when the
allocation would be handed back to the allocator. The same code runs on fake tensors
(``FakeTensorMode``: shapes and dtypes only, no memory) and on real CPU tensors, which is
how the tests prove the fake numbers.

At each new peak nothing is copied; the live set is snapshotted lazily, at the first release
after the peak (the total cannot have changed in between). Tensors are tagged by identity
(parameters, ``.grad``, optimizer state, cache tensors, the logits) when the workload knows
them; the snapshot is classified with those tags at the end, so a tensor tagged *after* the
peak (a gradient finished later, a cache layer stored when the forward returns) is still
classified correctly.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .result import COMPONENTS

try:
    from torch._guards import active_fake_mode as _active_fake_mode
except ImportError:  # pragma: no cover - older torch
    def _active_fake_mode() -> Any:  # type: ignore[misc]
        return None

__all__ = ["MemoryTracker", "BLOCK_BYTES", "round_block"]

#: The CUDA caching allocator hands out sizes rounded up to 512 bytes
#: (``kMinBlockSize`` in ``c10/cuda/CUDACachingAllocator.cpp``); ``max_memory_allocated``
#: counts those rounded sizes.
BLOCK_BYTES = 512

_Tensor = torch.Tensor


def round_block(n_bytes: int) -> int:
    """``n_bytes`` rounded up to the allocator's 512-byte block (0 stays 0)."""
    return -(-n_bytes // BLOCK_BYTES) * BLOCK_BYTES


class MemoryTracker(TorchDispatchMode):
    """Count live tensor storages per phase; remember what was live at the peak.

    ``overrides`` maps an ATen overload to ``fn(func, args, kwargs) -> out`` run instead of
    ``func`` (the tracer's fixes for fake-tensor gaps, see :mod:`memfit.trace.compat`).
    """

    def __init__(self, overrides: dict[Any, Any] | None = None, *,
                 subclasses_first: tuple[type, ...] = ()) -> None:
        super().__init__()
        self._overrides = overrides or {}
        # Tensor subclasses (DTensor) that dispatch before the tracker: they desugar into ops
        # on their local tensors, which come back here and are counted by their own storage.
        self._first = subclasses_first
        self._fake_on_entry: Any = None
        self._serial = 0
        self._live: dict[int, int] = {}      # serial -> nbytes, counted storages
        self._by_key: dict[int, int] = {}    # storage _cdata -> serial, every tracked storage
        self._refs: dict[int, Any] = {}      # serial -> weakref keeping the callback alive
        self._tags: dict[int, str] = {}      # serial -> component
        self._in_step: set[int] = set()      # serials born in the optimizer phase
        self._host: set[int] = set()         # serials excluded: host memory on a GPU run
        self._on_host = False                # new storages are host memory (see host())
        self.total = 0
        self.total_rounded = 0
        self.peak = 0
        self.peak_rounded = 0
        self.peak_phase = "load"
        self.phase = "load"
        self.phase_peaks: dict[str, int] = {}
        self.ops = 0
        self._pending = True
        self._snapshot: dict[int, int] | None = None

    # -- the dispatch hook ------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self._first:
            if any(t in self._first for t in types):
                return NotImplemented
            if _active_fake_mode() is not self._fake_on_entry:
                # DTensor's sharding propagation runs ops in a fake mode of its own to get
                # output metadata: no real run allocates those
                return func(*args, **kwargs)
        override = self._overrides.get(func)
        out = func(*args, **kwargs) if override is None else override(func, args, kwargs)
        self.ops += 1
        if isinstance(out, _Tensor):
            self._see(out)
        elif isinstance(out, (tuple, list)):
            self._see_all(out)
        return out

    def _see_all(self, outs: Iterable[Any]) -> None:
        for o in outs:
            if isinstance(o, _Tensor):
                self._see(o)
            elif isinstance(o, (tuple, list)):
                self._see_all(o)

    def __enter__(self) -> MemoryTracker:
        if self._first:
            self._fake_on_entry = _active_fake_mode()
        return super().__enter__()

    def _see(self, t: torch.Tensor) -> int | None:
        """Register ``t``'s storage if it is new; follow a resize if it is known."""
        inner = getattr(t, "_local_tensor", None)  # a DTensor: this rank's shard
        if inner is not None:
            t = inner
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse/nested tensors have no storage
            return None
        return self.see_storage(s)

    def see_storage(self, s: Any) -> int:
        """Register storage ``s`` if it is new; re-measure it if it is known (``resize_``)."""
        key = s._cdata
        serial = self._by_key.get(key)
        if serial is None:
            return self._register(s, key)
        old = self._live.get(serial)
        if old is not None:
            nb = s.nbytes()
            if nb != old:  # resize_ / set_ / out= growing a known storage
                self._change(serial, nb - old, old, nb)
        return serial

    def _register(self, s: Any, key: int) -> int:
        nb = s.nbytes()
        self._serial = serial = self._serial + 1
        self._by_key[key] = serial
        self._live[serial] = nb
        self._refs[serial] = weakref.ref(s, partial(self._free, serial, key))
        if self._on_host:
            del self._live[serial]
            self._host.add(serial)
            return serial
        if self.phase == "optimizer":
            self._in_step.add(serial)
        self.total += nb
        self.total_rounded += -(-nb // BLOCK_BYTES) * BLOCK_BYTES
        self._grew()
        return serial

    def _grew(self) -> None:
        total = self.total
        if total > self.peak:
            self.peak = total
            self.peak_phase = self.phase
            self._pending = True
        if self.total_rounded > self.peak_rounded:
            self.peak_rounded = self.total_rounded
        if total > self.phase_peaks.get(self.phase, -1):
            self.phase_peaks[self.phase] = total

    def _shrinking(self) -> None:
        """Called just before the total falls: keep the peak's live set if it is one."""
        if self._pending:
            self._snapshot = dict(self._live)
            self._pending = False

    def _change(self, serial: int, delta: int, old: int, new: int) -> None:
        if delta < 0:
            self._shrinking()
        self._live[serial] = new
        self.total += delta
        self.total_rounded += round_block(new) - round_block(old)
        if delta > 0:
            self._grew()

    def _free(self, serial: int, key: int, _ref: Any = None) -> None:
        self._refs.pop(serial, None)
        if self._by_key.get(key) == serial:
            del self._by_key[key]
        if serial not in self._live:
            self._host.discard(serial)
            return
        self._shrinking()
        nb = self._live.pop(serial)
        self.total -= nb
        self.total_rounded -= -(-nb // BLOCK_BYTES) * BLOCK_BYTES

    # -- what the workload tells the ledger -------------------------------------------------
    def set_phase(self, phase: str) -> None:
        """Name the phase the next ops run in; its peak starts at what is live now."""
        self.phase = phase
        if self.total > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.total

    def track(self, tensors: Iterable[Any], tag: str | None = None) -> None:
        """Count tensors made outside the mode, and tag untagged storages with ``tag``.

        A storage that already has a tag keeps it; :meth:`retag` replaces tags.
        """
        for t in tensors:
            if not isinstance(t, _Tensor):
                continue
            serial = self._see(t)
            if serial is None or tag is None:
                continue
            if self._tags.get(serial) is None:
                self._tags[serial] = tag

    def retag(self, tensors: Iterable[Any], tag: str) -> None:
        """Set the tag of ``tensors``' storages, replacing any earlier tag."""
        for t in tensors:
            if isinstance(t, _Tensor):
                serial = self._see(t)
                if serial is not None:
                    self._tags[serial] = tag

    def exclude(self, tensors: Iterable[Any]) -> None:
        """Stop counting these storages: on a GPU run they live in host memory."""
        for t in tensors:
            if not isinstance(t, _Tensor):
                continue
            serial = self._see(t)
            if serial is None or serial not in self._live:
                continue
            self._shrinking()
            nb = self._live.pop(serial)
            self.total -= nb
            self.total_rounded -= round_block(nb)
            self._host.add(serial)

    @contextlib.contextmanager
    def host(self) -> Iterator[None]:
        """Storages made inside are host memory on a GPU run (offloaded copies): not counted."""
        before, self._on_host = self._on_host, True
        try:
            yield
        finally:
            self._on_host = before

    def reset_peak(self) -> None:
        """Forget the peaks so far (training's first step); what is live now is the floor."""
        self.peak = self.total
        self.peak_rounded = self.total_rounded
        self.peak_phase = self.phase
        self.phase_peaks = {self.phase: self.total}
        self._pending = True
        self._snapshot = None

    # -- the answer -------------------------------------------------------------------------
    def components(self) -> dict[str, int]:
        """What was live at the ``peak`` moment, by component; sums to ``peak``."""
        snapshot = self._snapshot if not self._pending else dict(self._live)
        assert snapshot is not None
        out = dict.fromkeys(COMPONENTS, 0)
        tags, in_step = self._tags, self._in_step
        for serial, nb in snapshot.items():
            tag = tags.get(serial)
            if tag is None:
                tag = "temporaries" if serial in in_step else "activations"
            out[tag] += nb
        assert sum(out.values()) == self.peak, (sum(out.values()), self.peak)
        return out
