"""Where the local engine's page work runs: one small interface, two implementations.

`LocalBackend` hands every step of a chunk (the text-layer pass, then each page to OCR) to a
`PageExecutor` as a worker function of `pipeline.backends.local.worker` with its arguments: plain,
picklable data in, a `WorkerOutcome` out. `ProcessExecutor` runs them in this machine's process
pool; `pipeline.backends.local.cluster.DaskExecutor` on a Dask cluster. Nothing else differs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from pipeline.backends.local import worker
from pipeline.child_process import init_process, terminal_signals_blocked
from pipeline.errors import Category, RetryableError


class PageExecutor(Protocol):
    """Runs worker functions somewhere and hands back their `WorkerOutcome`."""

    @property
    def capacity(self) -> int:
        """Worker functions that can run at once now (processes, or the cluster's threads)."""
        ...

    @property
    def workers(self) -> int:
        """Worker processes (this machine's pool) or Dask workers connected now."""
        ...

    @property
    def peak_workers(self) -> int:
        """The most `workers` at once so far (a cluster grows and shrinks during a run)."""
        ...

    def share(self, data: bytes) -> Any:
        """A handle for `data` to pass to several calls (a chunk's bytes, read by every page)."""
        ...

    def unshare(self, handle: Any) -> None:
        """The calls that needed `share`'s handle are over."""
        ...

    async def run(self, fn: Any, *args: Any) -> worker.WorkerOutcome:
        """`fn(*args)` on a worker. Raises RetryableError when the worker was lost."""
        ...

    async def close(self) -> None: ...


class ProcessExecutor:
    """A ProcessPoolExecutor (spawn) of `processes` workers on this machine."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def capacity(self) -> int:
        return self.processes

    @property
    def workers(self) -> int:
        return self.processes

    @property
    def peak_workers(self) -> int:
        return self.processes

    def share(self, data: bytes) -> Any:
        return data  # pickled into each call: a process pool has no shared store

    def unshare(self, handle: Any) -> None:
        return None

    def _executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("LocalBackend is closed")
        if self._pool is None:
            # spawn, not fork: the parent runs an event loop and threads; forking those is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_process,
            )
        return self._pool

    async def run(self, fn: Any, *args: Any) -> worker.WorkerOutcome:
        pool = self._executor()
        loop = asyncio.get_running_loop()
        try:
            with terminal_signals_blocked():  # a worker started now is born deaf to Ctrl-C
                future = loop.run_in_executor(pool, fn, *args)
            return await future
        except KeyboardInterrupt as exc:
            # Only a worker can raise it here (the run's own SIGINT goes to its signal handler);
            # it must not escape into the event loop and end the run without its report.
            raise RetryableError(
                "a local OCR worker process was interrupted", category=Category.BACKEND
            ) from exc
        except BrokenProcessPool as exc:
            # A worker died (a crash inside a native library, or the OOM killer). Start a fresh
            # pool for what follows; this chunk may be retried.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise RetryableError(
                "a local OCR worker process died (native crash or out of memory)",
                category=Category.BACKEND,
            ) from exc

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: pool.shutdown(wait=True, cancel_futures=True)
            )
