"""Worker processes that a run starts (the local engine's pool, the PDF probes): spawned, deaf
to the terminal's stop signals, and dying with their parent.

A terminal sends Ctrl-C to the whole foreground process group; a worker that took it would die or
hand a KeyboardInterrupt back to the event loop, and the run would end without its report.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator

# Stop signals that reach a whole process group: Ctrl-C in a terminal, `kill -- -PGID`. Stopping is
# the parent's decision: it lets pages in flight finish, then shuts the pool down.
TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def init_process() -> None:
    """Pool initializer: deaf to the terminal's signals, yet dying with the parent (Linux).

    A terminal sends Ctrl-C to the whole foreground process group. A worker that took it would
    die or hand a KeyboardInterrupt back to the event loop, and the run would end without its
    report. So the worker leaves the group (signals to the job no longer reach it), ignores
    SIGINT (sent to it alone, it means nothing to a worker), and still dies with its parent
    through PR_SET_PDEATHSIG, so a killed run leaves no OCR orphans. The parent starts workers
    with the terminal's signals blocked (`terminal_signals_blocked`): one arriving before this
    point stays pending and is discarded or acted on below, never mid-import.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker writing a warning to the terminal from outside the foreground group must not
    # be stopped by `stty tostop`.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    if hasattr(os, "setpgid"):
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        # The parent is already gone (reparented to init or a subreaper). Not `getppid() == 1`:
        # a run that is PID 1 itself (a container without an init) has every child's ppid 1.
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:
            os._exit(1)
    # A pending SIGINT is dropped (ignored); a pending SIGTERM (the pool's, or a group kill that
    # came during start-up) ends the process: the parent sees a dead worker, a retryable failure.
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINAL_SIGNALS)


@contextlib.contextmanager
def terminal_signals_blocked() -> Iterator[None]:
    """In the parent, around submitting work: processes the pool starts now inherit the mask,
    so they cannot die of a Ctrl-C while importing, before `init_process` leaves the group.
    The mask is the calling thread's: a signal that arrives meanwhile goes to another thread of
    the parent, or to this one when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
