"""PDFs opened in another process: qpdf's parse of a PDF that is sent as it is, off this one.

pikepdf holds the GIL while qpdf parses a file: ~1 ms for a 50-page PDF, and two threads opening
PDFs take three times as long as one. At 200 documents a second that parse alone kept the event
loop and every other thread of the run waiting (50-page documents at R = 200: 0.59-0.76 of the
rate; docs/performance.md). So a run that meets many PDFs starts one process that opens each PDF
small enough to be sent whole and says what it found (`PdfFacts`); the run's own process then
only hashes the bytes and sends them. A PDF to cut, to decrypt or to repair, one over `MAX_BYTES`
(copying it costs what its parse would), or one the process could not tell about, is opened here
as before, with the same checks and errors.

The event loop asks the process itself, over a socket, with up to `IN_FLIGHT_BYTES` of PDFs on the
way: the frames are `multiprocessing.connection`'s (a 4-byte length, then a pickle, or the PDF's
own bytes, which are not copied into a pickle), so the process reads them with a plain
`Connection` and answers in order. Asking from the split threads, a call
at a time under one lock, made PDFs queue for seconds at R = 200 on a slow machine: each call
took the GIL back and forth between threads (docs/performance.md).

The process starts once a run has met `START_AFTER` PDFs (a start costs ~0.3 s of CPU and ~40 MB;
a small run does not need it), only on a machine with more than one core, and is used once it has
said it is ready. It is started from a thread of its own that lives as long as the probes: Linux
kills a child whose *starting thread* ends (PR_SET_PDEATHSIG, `pipeline/child_process.py`). A
process that spends more than `WAIT_S` on one PDF (a hostile file) is killed, and that PDF and
any others on the way are opened here, where the document's own timeout governs; after
`MAX_KILLS` of those the run stops probing. A process that cannot start (no more processes or
files allowed) turns probing off for the run; nothing else changes.

One `PdfProbes` belongs to one event loop: every method but the starter thread's runs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from pipeline.child_process import init_process, terminal_signals_blocked
from pipeline.cpus import usable_cores
from pipeline.stages.split import PdfFacts, pdf_facts

START_AFTER = 32
WAIT_S = 5.0
MAX_KILLS = 3
MAX_BYTES = 4 * 1024 * 1024
IN_FLIGHT_BYTES = 8 * 1024 * 1024  # PDFs sent and not answered (at least one), in bytes
ONE_CORE = "one core"  # why probing is off on one core: by design, no warning

# What the probe process runs on a PDF: its facts, or None when it cannot tell.
PdfProbe = Callable[[bytes, str, list[str] | None], PdfFacts | None]

_Message = tuple[bytes, str, list[str] | None]  # a PDF's bytes, its name, the passwords to try
_Answer = asyncio.Future[PdfFacts | None]
_LENGTH = struct.Struct("!i")  # multiprocessing.connection's frame header (MAX_BYTES < 2**31)


def facts_or_none(data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
    """Runs in the probe process. Never raises: the pipeline's errors carry keyword arguments
    that do not survive pickling, and a damaged PDF is the caller's to report."""
    try:
        return pdf_facts(data, rel, passwords)
    except Exception:
        return None


def serve(conn: Connection, function: PdfProbe) -> None:
    """The probe process: say it is ready, then answer calls in order until the socket closes."""
    init_process()
    conn.send(True)
    while True:
        try:
            rel, passwords = conn.recv()
            data = conn.recv_bytes()  # sent as it is: no pickled copy on either side
        except (EOFError, OSError):
            return
        facts = function(data, rel, passwords)
        del data  # an idle process holds no document
        conn.send(facts)


def _frames(message: _Message) -> tuple[bytes, memoryview, bytes, bytes]:
    """A call as `serve` reads it: the name and passwords as `Connection.send` frames them
    (length, pickle), then the PDF's bytes as `send_bytes` does (length, the bytes)."""
    data, rel, passwords = message
    meta = ForkingPickler.dumps((rel, passwords))
    return _LENGTH.pack(len(meta)), meta, _LENGTH.pack(len(data)), data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message the process sent (IncompleteReadError, an EOFError, once it is gone)."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: close() after the run
        return None


class _Child:
    """One spawned probe process; the calls sent to it, oldest first, and those waiting to be
    sent. Calls go out while the bytes on the way stay within `IN_FLIGHT_BYTES` (always one),
    and each answer lets more go at once, so the process need not wait for the callers' tasks
    to run before it has its next PDF."""

    def __init__(self, function: PdfProbe) -> None:
        # spawn, not fork: the run has an event loop and threads; forking those is unsafe. The
        # terminal's signals are blocked while it starts, so it is born deaf to a Ctrl-C meant
        # for the run (`init_process`).
        context = multiprocessing.get_context("spawn")
        conn, far_end = context.Pipe()
        try:
            self.process = context.Process(target=serve, args=(far_end, function), daemon=True,
                                           name="ocr-pdf-probe")
            with terminal_signals_blocked():
                self.process.start()
        except BaseException:
            conn.close()
            raise
        finally:
            far_end.close()
        try:
            # The loop's end of the socket pair; the Connection that held it is closed, so
            # nothing else reads the socket or minds that the loop makes it non-blocking.
            self.sock = socket.socket(fileno=os.dup(conn.fileno()))
        except BaseException:  # EMFILE: the started process must not outlive this
            self.process.kill()
            self.process.join(2)
            raise
        finally:
            conn.close()
        self.ready = False
        self.writer: asyncio.StreamWriter | None = None
        self.sent: deque[tuple[_Answer, int]] = deque()  # with each call's bytes
        self.unsent: deque[tuple[_Message, _Answer]] = deque()
        self.bytes_on_the_way = 0
        self.busy_since = 0.0  # when the process began the oldest call not yet answered
        self.talker: asyncio.Task[None] | None = None
        self.watchdog: asyncio.Handle | None = None

    def ask(self, message: _Message) -> _Answer:
        """Queue a call; its answer arrives in the future returned (None once the process is
        gone)."""
        loop = asyncio.get_running_loop()
        answer: _Answer = loop.create_future()
        self.unsent.append((message, answer))
        self._send_more(loop.time())
        return answer

    def _send_more(self, now: float) -> None:
        assert self.writer is not None
        while self.unsent:
            size = len(self.unsent[0][0][0])
            if self.sent and self.bytes_on_the_way + size > IN_FLIGHT_BYTES:
                return
            message, answer = self.unsent.popleft()
            if answer.done():  # cancelled with its document before it went out
                continue
            if not self.sent:
                self.busy_since = now
            for part in _frames(message):
                self.writer.write(part)
            self.sent.append((answer, size))
            self.bytes_on_the_way += size

    def busy_for(self, now: float) -> float:
        """How long the process has spent on the call it is answering (0 when idle)."""
        return now - self.busy_since if self.sent else 0.0

    async def talk(self) -> None:
        """Wait for the process to say it is ready, then hand each answer to its call."""
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        self.ready = bool(await _read_frame(reader))
        loop = asyncio.get_running_loop()
        while True:
            facts = await _read_frame(reader)
            answer, size = self.sent.popleft()
            self.bytes_on_the_way -= size
            self.busy_since = loop.time()
            if not answer.done():  # not cancelled with the document that asked
                answer.set_result(facts)
            self._send_more(self.busy_since)

    def reap(self) -> None:
        """Kill (it may be deep in a hostile file), wait for the exit, close the socket, and
        answer every call with None (the callers then open their PDFs)."""
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join(2)
        if self.process.exitcode is not None:
            self.process.close()
        if self.writer is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self.writer.transport.abort()
        self.sock.close()
        answers = [answer for answer, _ in self.sent] + [answer for _, answer in self.unsent]
        self.sent.clear()
        self.unsent.clear()
        for answer in answers:
            if not answer.done():
                answer.set_result(None)


class PdfProbes:
    """Facts about a PDF from the probe process (`facts`), or None: the caller opens it."""

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
        self._child: _Child | None = None
        self._starter: threading.Event | None = None  # set: the starter thread may end
        self._closed = False

    def ready(self) -> bool:
        """The probe process has started and answers calls."""
        return self._child is not None and self._child.ready and not self._closed

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def start(self) -> None:
        """Start the process now, whatever the count of PDFs (it answers once ready)."""
        if self._may_start():
            self._begin()

    async def facts(self, data: bytes, rel: str, passwords: list[str] | None) -> PdfFacts | None:
        """What the process found in this PDF; None when there is no ready process, it could
        not tell, or it was killed first (it spent more than `wait_s` on one PDF)."""
        if len(data) > MAX_BYTES:
            return None
        child = self._child
        if child is None or not self.ready():
            if child is None:
                self._count_towards_start()
            return None
        facts = await child.ask((data, rel, passwords))
        if facts is not None:
            self.answered += 1
        return facts

    @property
    def enabled(self) -> bool:
        """Probing is on: more than one core, and the process has not been given up on."""
        return self.off_because is None

    def summary(self) -> dict[str, Any]:
        """What the run report keeps: PDFs the process answered for, its kills, and why
        probing went off (None while on)."""
        return {"answered": self.answered, "kills": self.kills, "off": self.off_because}

    def _may_start(self) -> bool:
        """No process starting or started, and probing still on."""
        return (self._starter is None and not self._closed and self.enabled
                and self.kills < MAX_KILLS)

    def _count_towards_start(self) -> None:
        if self._may_start():
            self._seen += 1
            if self._seen >= self.start_after:
                self._begin()

    def _begin(self) -> None:
        """A thread that starts the child and lives as long as the child may."""
        self._starter = threading.Event()
        threading.Thread(target=self._start_and_stay,
                         args=(asyncio.get_running_loop(), self._starter),
                         name="ocr-pdf-probe", daemon=True).start()

    def _start_and_stay(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """The starter thread: start the child, hand it to the loop, wait to be let go."""
        try:
            child = _Child(self.function)
        except Exception as exc:  # EAGAIN, EMFILE: run without probes
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to tell
                loop.call_soon_threadsafe(self._could_not_start, stop, exc)
            return
        try:
            loop.call_soon_threadsafe(self._adopt, child, stop)
        except RuntimeError:  # the loop has closed
            child.reap()
            return
        stop.wait()

    def _could_not_start(self, stop: threading.Event, exc: Exception) -> None:
        self.off_because = f"could not start ({type(exc).__name__}: {exc})"
        if self._starter is stop:
            self._starter = None

    def _adopt(self, child: _Child, stop: threading.Event) -> None:
        """On the loop: the started child becomes the run's, unless the run moved on."""
        if self._closed or self._starter is not stop:
            child.reap()
            stop.set()
            return
        self._child = child
        child.talker = asyncio.get_running_loop().create_task(self._talk(child))
        self._watch(child)

    def _watch(self, child: _Child, over_since: float | None = None) -> None:
        """Every quarter of `wait_s`: kill a process that has spent more than `wait_s` on one
        PDF (a hostile file); its calls then get None. A call that looks over time is judged
        again one turn of the loop later, after the talker has read what came meanwhile: when
        the loop itself stalled (a split thread holding the GIL), the answer may be waiting in
        the socket, and the process is not stuck."""
        if child is not self._child:
            return
        loop = asyncio.get_running_loop()
        if child.busy_for(loop.time()) > self.wait_s:
            if over_since != child.busy_since:  # first seen over time: look again next turn
                child.watchdog = loop.call_soon(self._watch, child, child.busy_since)
                return
            self.kills += 1
            if self.kills >= MAX_KILLS:
                self.off_because = (f"killed {self.kills} times, each after {self.wait_s:g} s"
                                    " without an answer")
            self._drop(child)
            return
        child.watchdog = loop.call_later(self.wait_s / 4, self._watch, child)

    async def _talk(self, child: _Child) -> None:
        try:
            await child.talk()
        except asyncio.CancelledError:
            raise
        except Exception:  # EOF or a broken socket: it died (a crash in qpdf, the OOM killer)
            if not child.ready and self._child is child:
                self.off_because = "died while starting"
            self._drop(child)

    def _drop(self, child: _Child) -> None:
        """End this child and its starter thread; later PDFs count towards a new start."""
        child.reap()
        if child.talker is not None and child.talker is not _current_task():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                child.talker.cancel()
        if self._child is child:
            self._child, self._seen = None, 0
            if self._starter is not None:
                self._starter.set()
            self._starter = None

    def close(self) -> None:
        """Kill the process and let its starter thread end; calls on the way get None."""
        self._closed = True
        if self._child is not None:
            self._drop(self._child)
        if self._starter is not None:
            self._starter.set()
