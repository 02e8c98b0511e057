"""Fewer glibc malloc arenas for a long run.

glibc gives each thread that allocates its own arena (up to 8 per core), and an arena keeps the
memory its thread freed for later: with the store, split and manifest threads each holding a
fragmented arena, a batch run's peak RSS grew from 71 to 77-78 MiB between 1,000 and 10,000
documents. Two arenas held it to 73-74 (docs/batch.md, "Figures"). The GIL serialises most of
our allocations anyway, so sharing arenas costs no measurable speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas, before the run's threads start; an operator's own
    MALLOC_ARENA_MAX (or GLIBC_TUNABLES glibc.malloc.arena_max) wins. False where there is no
    glibc (musl, macOS): nothing to do."""
    if os.environ.get("MALLOC_ARENA_MAX") or "malloc.arena_max" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
