"""Process limits a busy fake server needs: thousands of connections open at once (R = 200
requests/s with 8 s answers keeps ~1,600 sockets open, past the usual soft limit of 1,024)."""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit now in force.

    Never fails: a platform that refuses keeps its limit (the server still runs, with fewer
    connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard
