"""Worker processes for the web server: every estimate runs in one, under a deadline.

A thread cannot be stopped; a process can. The server keeps ``size`` long-lived worker
processes (forked from a ``forkserver`` that has imported memfit, so a new one starts in
milliseconds); a request takes an idle one, sends it the job over a pipe and waits, checking
its deadline and whether its client is still connected. A job over its deadline, or whose
client left, has its worker killed (the work stops at once) and replaced; the request answers
503. Each worker runs under an address-space limit (``RLIMIT_AS``) and is replaced after
``max_jobs`` jobs, so the caches it builds (per-model memo tables) are bounded too.

``size=0`` runs jobs in the calling thread (no deadline, no cancellation): for tests of the
API's shape only.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MemfitError

__all__ = ["JobFailed", "WorkerPool"]


class JobFailed(Exception):
    """The job did not finish: ``kind`` is ``busy``, ``timeout``, ``gone`` or ``crashed``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def _limit_memory(max_bytes: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    except (ImportError, ValueError, OSError):  # not on this platform: the deadline remains
        pass


def _serve(conn: Any, max_bytes: int) -> None:
    """A worker's loop: run ``(fn, args)`` jobs until the pipe closes."""
    _limit_memory(max_bytes)
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[Any, ...] = ("ok", fn(*args))
        except MemfitError as exc:
            value = exc.value
            try:
                pickle.dumps(value)
            except Exception:  # noqa: BLE001 - an odd value travels as its repr
                value = repr(value)
            reply = ("memfit", str(exc), exc.field, value, exc.allowed)
        except MemoryError:
            reply = ("crashed", "the computation needed more memory than this server allows")
        except Exception as exc:  # noqa: BLE001 - reported to the request, logged there
            reply = ("crashed", f"{type(exc).__name__}: {str(exc)[:300]}")
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - the reply itself would not pickle
            conn.send(("crashed", "the result could not be sent back"))


@dataclass
class _Worker:
    process: Any
    conn: Any
    jobs: int = 0

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.join(timeout=2)
        finally:
            self.conn.close()


class WorkerPool:
    """``size`` worker processes; :meth:`run` one job in one of them under a deadline."""

    def __init__(self, size: int, *, max_bytes: int = 2 << 30, max_jobs: int = 500) -> None:
        self.size, self.max_bytes, self.max_jobs = size, max_bytes, max_jobs
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._idle.put(None)  # a slot; its process starts on first use
        self._ctx: Any = None

    def _context(self) -> Any:
        if self._ctx is None:
            methods = multiprocessing.get_all_start_methods()
            self._ctx = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn")
            if "forkserver" in methods:
                # what a job needs, imported once: each worker forks with it loaded
                self._ctx.set_forkserver_preload(["memfit", "memfit.api", "memfit.catalog",
                                                  "memfit.web.app"])
        return self._ctx

    def _start(self) -> _Worker:
        ctx = self._context()
        mine, theirs = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(theirs, self.max_bytes), daemon=True,
                              name="memfit-web-worker")
        process.start()
        theirs.close()
        return _Worker(process, mine)

    async def run(self, fn: Callable[..., Any], args: tuple[Any, ...], *, timeout_s: float,
                  busy_timeout_s: float, gone: Callable[[], Awaitable[bool]]) -> Any:
        """``fn(*args)`` in a worker: its result, or MemfitError as it raised it; JobFailed
        when no worker freed up within ``busy_timeout_s`` (busy), the job ran past
        ``timeout_s`` (timeout), ``gone()`` said the client left (gone) or the worker died."""
        import anyio

        if self.size == 0:
            return fn(*args)
        worker = await self._acquire(busy_timeout_s)
        keep = False
        try:
            if worker is None or not worker.process.is_alive():
                worker = self._start()
            worker.conn.send((fn, args))
            worker.jobs += 1
            deadline = time.monotonic() + timeout_s
            pause = 0.0005
            while not worker.conn.poll():
                if time.monotonic() > deadline:
                    raise JobFailed("timeout", f"the computation ran past this server's "
                                               f"{timeout_s:g} s limit and was stopped")
                if await gone():
                    raise JobFailed("gone", "the client closed the connection")
                await anyio.sleep(pause)
                pause = min(pause * 2, 0.02)
            try:
                reply = worker.conn.recv()
            except (EOFError, OSError):
                raise JobFailed("crashed", "the worker process ended unexpectedly") from None
            keep = reply[0] != "crashed" and worker.jobs < self.max_jobs
        finally:
            if worker is not None and not keep:
                worker.kill()
                worker = None
            self._idle.put(worker)
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "memfit":
            raise MemfitError(reply[1], field=reply[2], value=reply[3], allowed=reply[4])
        raise JobFailed("crashed", reply[1])

    async def _acquire(self, busy_timeout_s: float) -> _Worker | None:
        import anyio

        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise JobFailed("busy", "server busy") from None
                await anyio.sleep(0.01)

    def warm(self) -> None:
        """Start every worker now (a server's first requests then wait for none)."""
        slots = []
        while True:
            try:
                slots.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for worker in slots:
            self._idle.put(worker if worker is not None and worker.process.is_alive()
                           else self._start())

    def close(self) -> None:
        """Stop every idle worker (the busy ones stop when their job ends)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.kill()
