"""PDFs opened in another process: qpdf's parse of a PDF that is sent as it is, off this one.

pikepdf holds the GIL while qpdf parses a file: ~1 ms for a 50-page PDF, and two threads opening
PDFs take three times as long as one. At 200 documents a second that parse alone kept the event
loop and every other thread of the run waiting: 50-page documents at R = 200 reached 0.59-0.76 of
the rate (docs/performance.md). So a run that meets many PDFs starts one process that opens each
PDF small enough to be sent whole and says what it found (`PdfFacts`); the run's own process
then only hashes the bytes and sends them. A PDF to cut, to decrypt or to repair, or one the
process could not tell about, is opened here as before, with the same checks and errors.

The process starts once a run has met `START_AFTER` PDFs (a start costs ~0.3 s of CPU and ~40 MB;
a small run does not need it), only on a machine with more than one core, and is used once it has
answered a first call. A probe that takes longer than `WAIT_S` (a hostile file, a huge one) is
given up: the process is killed and the PDF opened here, where the document's own timeout
governs; after `MAX_KILLS` of those the run stops probing.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from pipeline.child_process import init_process, terminal_signals_blocked
from pipeline.stages.split import PdfFacts, pdf_facts

START_AFTER = 32
WAIT_S = 5.0
MAX_KILLS = 3

FactsFunction = Callable[[bytes, str, list[str] | None], PdfFacts | None]


def facts_or_none(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Runs in the probe process. Never raises: the pipeline's errors carry keyword arguments
    that do not survive pickling, and a damaged PDF is the caller's to report."""
    try:
        return pdf_facts(data, rel, passwords)
    except Exception:
        return None


def _ready() -> bool:
    return True


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class PdfProbes:
    """Called from the split threads as a `PdfProbe`: facts from the probe process, or None."""

    def __init__(self, *, start_after: int | None = None, wait_s: float | None = None,
                 cores: int | None = None, function: FactsFunction = facts_or_none) -> None:
        self.start_after = START_AFTER if start_after is None else start_after
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self.enabled = (available_cores() if cores is None else cores) > 1
        self.function = function
        self.answered = 0  # PDFs this process did not have to open
        self.kills = 0
        self._seen = 0
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._warm: Future[bool] | None = None
        self._closed = False

    def __call__(self, data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
        pool = self._ready_pool()
        if pool is None:
            return None
        try:
            future = pool.submit(self.function, data, rel, passwords)
            facts = future.result(timeout=self.wait_s)
        except FutureTimeout:
            self._kill(pool, stuck=True)
            return None
        except Exception:  # the pool broke (a crash in qpdf, the OOM killer) or was shut down
            self._kill(pool, stuck=False)
            return None
        if facts is not None:
            with self._lock:
                self.answered += 1
        return facts

    def _ready_pool(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._closed or not self.enabled or self.kills >= MAX_KILLS:
                return None
            if self._pool is None:
                self._seen += 1
                if self._seen >= self.start_after:
                    self._start()
                return None
            if self._warm is None or not self._warm.done():
                return None
            if self._warm.exception() is not None:  # the process could not start
                self.enabled = False
                return None
            return self._pool

    def _start(self) -> None:
        # spawn, not fork: this process runs an event loop and threads; forking those is unsafe.
        # The terminal's signals are blocked while the process starts, so it is born deaf to a
        # Ctrl-C meant for the run (`init_process`).
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_process)
        with terminal_signals_blocked():
            self._warm = pool.submit(_ready)
        self._pool = pool

    def _kill(self, pool: ProcessPoolExecutor, *, stuck: bool) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool, self._warm = None, None
                self._seen = 0
                if stuck:
                    self.kills += 1
        _kill_pool(pool)

    def close(self) -> None:
        """Kill the process (it may be deep in a hostile file); a run never waits for it."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _kill_pool(pool)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
