"""PDFs opened in another process: qpdf's parse of a PDF that is sent as it is, off this one.

pikepdf holds the GIL while qpdf parses a file: ~1 ms for a 50-page PDF, and two threads opening
PDFs take three times as long as one. At 200 documents a second that parse alone kept the event
loop and every other thread of the run waiting: 50-page documents at R = 200 reached 0.59-0.76 of
the rate (docs/performance.md). So a run that meets many PDFs starts one process that opens each
PDF small enough to be sent whole and says what it found (`PdfFacts`); the run's own process
then only hashes the bytes and sends them. The split threads talk to it over one pipe, a call at a
time: a `ProcessPoolExecutor`'s two helper threads cost the run more GIL time than they saved
(py-spy, docs/performance.md). A PDF to cut, to decrypt or to repair, or one the
process could not tell about, is opened here as before, with the same checks and errors.

The process starts once a run has met `START_AFTER` PDFs (a start costs ~0.3 s of CPU and ~40 MB;
a small run does not need it), only on a machine with more than one core, and is used once it has
said it is ready. A probe that takes longer than `WAIT_S` (a hostile file, a huge one) is
given up: the process is killed and the PDF opened here, where the document's own timeout
governs; after `MAX_KILLS` of those the run stops probing.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

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


def serve(conn: Connection, function: FactsFunction) -> None:
    """The probe process: say it is ready, then answer calls until the pipe closes."""
    init_process()
    conn.send(True)
    while True:
        try:
            data, rel, passwords = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(function(data, rel, passwords))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Child:
    """One spawned probe process and the run's end of its pipe."""

    def __init__(self, function: FactsFunction) -> None:
        # spawn, not fork: the run has an event loop and threads; forking those is unsafe. The
        # terminal's signals are blocked while it starts, so it is born deaf to a Ctrl-C meant
        # for the run (`init_process`).
        context = multiprocessing.get_context("spawn")
        self.conn, far_end = context.Pipe()
        self.process = context.Process(target=serve, args=(far_end, function), daemon=True,
                                       name="ocr-pdf-probe")
        with terminal_signals_blocked():
            self.process.start()
        far_end.close()
        self.ready = False

    def poll_ready(self) -> bool:
        if not self.ready and self.conn.poll(0):
            self.ready = bool(self.conn.recv())
        return self.ready

    def ask(self, call: tuple[Any, ...], wait_s: float) -> Any:
        """The answer, or TimeoutError after `wait_s`; EOFError/OSError when the process died."""
        self.conn.send(call)
        if not self.conn.poll(wait_s):
            raise TimeoutError
        return self.conn.recv()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(2)


class PdfProbes:
    """Called from the split threads as a `PdfProbe`: facts from the probe process, or None."""

    def __init__(self, *, start_after: int | None = None, wait_s: float | None = None,
                 cores: int | None = None, function: FactsFunction = facts_or_none) -> None:
        self.start_after = START_AFTER if start_after is None else start_after
        self.wait_s = WAIT_S if wait_s is None else wait_s
        self.enabled = (available_cores() if cores is None else cores) > 1
        self.function = function
        self.answered = 0  # PDFs the run's process did not have to open
        self.kills = 0
        self._seen = 0
        self._lock = threading.Lock()  # one call on the pipe at a time
        self._child: _Child | None = None
        self._closed = False

    def ready(self) -> bool:
        """The probe process has started and answers calls."""
        with self._lock:
            return self._child is not None and self._child.poll_ready()

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def __call__(self, data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
        if not self._lock.acquire(timeout=self.wait_s):
            return None
        try:
            child = self._ready_child()
            if child is None:
                return None
            try:
                facts = child.ask((data, rel, passwords), self.wait_s)
            except TimeoutError:
                self.kills += 1
                self._drop(child)
                return None
            except (EOFError, OSError):  # it died: a crash in qpdf, the OOM killer, close()
                self._drop(child)
                return None
            if facts is not None:
                self.answered += 1
            return facts
        finally:
            self._lock.release()

    def _ready_child(self) -> _Child | None:
        """Under the lock: the child when it is ready; else start it once enough PDFs came."""
        if self._closed or not self.enabled or self.kills >= MAX_KILLS:
            return None
        if self._child is None:
            self._seen += 1
            if self._seen >= self.start_after:
                self._child = _Child(self.function)
            return None
        try:
            return self._child if self._child.poll_ready() else None
        except (EOFError, OSError):  # died while starting
            self._drop(self._child)
            self.enabled = False
            return None

    def _drop(self, child: _Child) -> None:
        child.kill()
        child.conn.close()
        if self._child is child:
            self._child, self._seen = None, 0

    def close(self) -> None:
        """Kill the process (it may be deep in a hostile file); a run never waits for it."""
        self._closed = True
        child = self._child
        if child is not None:
            child.kill()  # a thread waiting on it sees the pipe close and lets go

