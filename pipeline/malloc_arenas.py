"""Fewer glibc malloc arenas for a long run, and the heap's free pages given back as it goes.

glibc gives each thread that allocates its own arena (up to 8 per core), and an arena keeps the
memory its thread freed for later: with the store, split and manifest threads each holding a
fragmented arena, a batch run's peak RSS grew from 71 to 77-78 MiB between 1,000 and 10,000
documents. Two arenas held it to 73-74 (docs/batch.md, "Figures"). The GIL serialises most of
our allocations anyway, so sharing arenas costs no measurable speed.

A run at R = 200 frees a document's bytes, its request body and its answer (tens of KiB each,
above what Python's small-object allocator handles) two hundred times a second, between
objects that live for seconds. glibc keeps the freed memory inside its heap: at L = 8 s with
50-page documents the peak resident set grew from 250 to 320-365 MiB over a minute while the
live Python objects stayed level. `FreePageTrim` asks glibc every TRIM_EVERY s to give the free
pages back (`malloc_trim`, 5 ms in a thread, 25 at most): the same run then peaked at 287-305
over six runs. (Keeping fewer documents open for the pacer, `READY_SECONDS` in the rate
limiter, later took it to 226-256: docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2
TRIM_EVERY = 2.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (`find_library` may run a subprocess)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)` (it releases the GIL while it runs); None without glibc."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class FreePageTrim:
    """`await run()` for the length of a run; cancel it at the end."""

    def __init__(self, every: float = TRIM_EVERY,
                 trim: Callable[[int], int] | None = None) -> None:
        self.every = every
        self._trim = trim if trim is not None else malloc_trim()
        self.trims = 0

    async def run(self) -> None:
        if self._trim is None:
            return  # not glibc: nothing to ask
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every)
            await loop.run_in_executor(None, self._trim, 0)  # off the loop: it takes ms
            self.trims += 1


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas, before the run's threads start; an operator's own
    MALLOC_ARENA_MAX (or GLIBC_TUNABLES glibc.malloc.arena_max) wins. False where there is no
    glibc (musl, macOS): nothing to do."""
    if os.environ.get("MALLOC_ARENA_MAX") or "malloc.arena_max" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
