"""PDFs opened in another process: qpdf's parse of a PDF that is sent as it is, off this one.

pikepdf holds the GIL while qpdf parses a file: ~1 ms for a 50-page PDF, and two threads opening
PDFs take three times as long as one. At 200 documents a second that parse alone kept the event
loop and every other thread of the run waiting (50-page documents at R = 200: 0.59-0.76 of the
rate; docs/performance.md). So a run that meets many PDFs starts one process that opens each PDF
small enough to be sent whole and says what it found (`PdfFacts`); the run's own process then
only hashes the bytes and sends them. The split threads talk to it over one pipe, a call at a
time: a `ProcessPoolExecutor`'s two helper threads cost the run more GIL time than they saved.
A PDF to cut, to decrypt or to repair, one over `MAX_BYTES` (copying it costs what its parse
would), or one the process could not tell about, is opened here as before, with the same checks
and errors.

The process starts once a run has met `START_AFTER` PDFs (a start costs ~0.3 s of CPU and ~40 MB;
a small run does not need it), only on a machine with more than one core, and is used once it has
said it is ready. It is started from a thread of its own that lives as long as the probes: Linux
kills a child whose *starting thread* ends (PR_SET_PDEATHSIG, `pipeline/child_process.py`), and a
split thread may end when its pool is replaced. A probe that takes longer than `WAIT_S` (a hostile
file) is given up: the process is killed and the PDF opened here, where the document's own
timeout governs; after `MAX_KILLS` of those the run stops probing. A process that cannot start
(no more processes or files allowed) turns probing off for the run; nothing else changes.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.connection import Connection
from typing import Any

from pipeline.child_process import init_process, terminal_signals_blocked
from pipeline.cpus import usable_cores
from pipeline.stages.split import PdfFacts, PdfProbe, pdf_facts

START_AFTER = 32
WAIT_S = 5.0
MAX_KILLS = 3
MAX_BYTES = 4 * 1024 * 1024
ONE_CORE = "one core"  # why probing is off on one core: by design, no warning


def facts_or_none(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Runs in the probe process. Never raises: the pipeline's errors carry keyword arguments
    that do not survive pickling, and a damaged PDF is the caller's to report."""
    try:
        return pdf_facts(data, rel, passwords)
    except Exception:
        return None


def serve(conn: Connection, function: PdfProbe) -> None:
    """The probe process: say it is ready, then answer calls until the pipe closes."""
    init_process()
    conn.send(True)
    while True:
        try:
            data, rel, passwords = conn.recv()
        except (EOFError, OSError):
            return
        facts = function(data, rel, passwords)
        del data  # an idle process holds no document
        conn.send(facts)


class _Child:
    """One spawned probe process and the run's end of its pipe."""

    def __init__(self, function: PdfProbe) -> None:
        # spawn, not fork: the run has an event loop and threads; forking those is unsafe. The
        # terminal's signals are blocked while it starts, so it is born deaf to a Ctrl-C meant
        # for the run (`init_process`).
        context = multiprocessing.get_context("spawn")
        self.conn, far_end = context.Pipe()
        try:
            self.process = context.Process(target=serve, args=(far_end, function), daemon=True,
                                           name="ocr-pdf-probe")
            with terminal_signals_blocked():
                self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
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

    def signal_kill(self) -> None:
        """SIGKILL, from any thread: a thread waiting on the pipe then sees it close."""
        if self.process.exitcode is None:
            self.process.kill()

    def reap(self) -> None:
        """Under the probes' lock only: kill, wait for the exit, close both handles."""
        self.signal_kill()
        self.process.join(2)
        self.conn.close()
        if self.process.exitcode is not None:
            self.process.close()


class PdfProbes:
    """Called from the split threads as a `PdfProbe`: facts from the probe process, or None."""

    def __init__(self, *, start_after: int | None = None, wait_s: float | None = None,
                 cores: int | None = None, function: PdfProbe = facts_or_none) -> None:
        self.start_after = START_AFTER if start_after is None else start_after
        self.wait_s = WAIT_S if wait_s is None else wait_s
        one_core = (usable_cores() if cores is None else cores) <= 1
        self.off_because: str | None = ONE_CORE if one_core else None  # None: probing is on
        self.function = function
        self.answered = 0  # probes answered with facts (whatever the caller then does)
        self.kills = 0
        self._seen = 0
        self._lock = threading.Lock()  # one call on the pipe at a time; guards _child
        self._child: _Child | None = None
        self._starter: threading.Event | None = None  # set: the starter thread may end
        self._closed = False

    def ready(self) -> bool:
        """The probe process has started and answers calls."""
        with self._lock:
            return self._ready_child() is not None

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def start(self) -> None:
        """Start the process now, whatever the count of PDFs (it answers once ready)."""
        with self._lock:
            if self._may_start():
                self._begin()

    def __call__(self, data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
        if len(data) > MAX_BYTES or not self._lock.acquire(timeout=self.wait_s):
            return None
        try:
            child = self._ready_child()
            if child is None:
                self._count_towards_start()
                return None
            try:
                facts = child.ask((data, rel, passwords), self.wait_s)
            except TimeoutError:
                self.kills += 1
                if self.kills >= MAX_KILLS:
                    self.off_because = (f"killed {self.kills} times, each after {self.wait_s:g} s"
                                        " without an answer")
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
        """Under the lock: the child when it has said it is ready."""
        child = self._child
        if child is None or self._closed:
            return None
        try:
            return child if child.poll_ready() else None
        except (EOFError, OSError):  # died while starting: no use trying again
            self._drop(child)
            self.off_because = "died while starting"
            return None

    @property
    def enabled(self) -> bool:
        """Probing is on: more than one core, and the process has not been given up on."""
        return self.off_because is None

    def summary(self) -> dict[str, Any]:
        """What the run report keeps: PDFs the process answered for, its kills, and why
        probing went off (None while on)."""
        return {"answered": self.answered, "kills": self.kills, "off": self.off_because}

    def _may_start(self) -> bool:
        """Under the lock: no process starting or started, and probing still on."""
        return (self._starter is None and not self._closed and self.enabled
                and self.kills < MAX_KILLS)

    def _count_towards_start(self) -> None:
        if self._may_start():
            self._seen += 1
            if self._seen >= self.start_after:
                self._begin()

    def _begin(self) -> None:
        """Under the lock: a thread that starts the child and lives as long as the child may."""
        self._starter = threading.Event()
        threading.Thread(target=self._start_and_stay, args=(self._starter,), name="ocr-pdf-probe",
                         daemon=True).start()

    def _start_and_stay(self, stop: threading.Event) -> None:
        try:
            child = _Child(self.function)
        except Exception as exc:  # EAGAIN, EMFILE: run without probes
            with self._lock:
                self.off_because = f"could not start ({type(exc).__name__}: {exc})"
                if self._starter is stop:
                    self._starter = None
            return
        with self._lock:
            if self._closed or stop.is_set():
                child.reap()
                return
            self._child = child
        stop.wait()

    def _drop(self, child: _Child) -> None:
        """Under the lock: end this child and its starter thread; later PDFs count again."""
        child.reap()
        if self._child is child:
            self._child, self._seen = None, 0
            if self._starter is not None:
                self._starter.set()
            self._starter = None

    def close(self) -> None:
        """Kill the process (it may be deep in a hostile file). Waits at most a few seconds:
        the kill frees a split thread waiting on the pipe, which then lets go of the lock."""
        self._closed = True
        child = self._child
        if child is not None:
            child.signal_kill()
        if self._lock.acquire(timeout=self.wait_s):
            try:
                if self._child is not None:
                    self._drop(self._child)
                if self._starter is not None:
                    self._starter.set()
            finally:
                self._lock.release()
        elif self._starter is not None:
            self._starter.set()
