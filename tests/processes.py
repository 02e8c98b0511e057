"""What a test sees of a run's child processes, through /proc (Linux, as the whole suite)."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def multiprocessing_workers(pid: int) -> set[int]:
    """`pid`'s children that multiprocessing started, but its resource tracker."""
    workers = set()
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
            workers.add(child)
    return workers


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for an init that may never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    """Gone for good: its parent has waited for it (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
