"""The garbage collector's full passes, paced: one a minute instead of a stall every few seconds.

A run at R = 200 with latencies of seconds keeps ~2,000 requests and their documents alive at
once. Each lives long enough to reach the collector's oldest generation, so CPython ran a full
collection every ~6 s, and each walked every live object: 0.21-0.30 s with the event loop
stopped. The limiter catches up what a stall costs, but the bunched sends that make it up then
repeat every second (the window holds them), and a stall that hits one of those is lost: at
R = 200, L = 8 s the sends fell from 197 to 165-190 in those seconds (docs/performance.md).

So every FREEZE_EVERY seconds the objects alive are frozen (`gc.freeze()`: moved out of the
collector's reach; freeing by reference count goes on as before) and a full pass only walks
what survived since. Everything is unfrozen and collected once every FULL_EVERY seconds, or
sooner when the process has grown by EARLY_PASS_BYTES since the last pass: cyclic garbage that
was alive at a tick (a retried request's tenacity loop holds its chunk's bytes) waits at most
that long or that much (measured: ~75,000 objects a minute at R = 200, freed in one 0.4 s pass
that the limiter's catch-up absorbs).

Nothing is paced when the collector is off or something else froze objects before the run (an
application embedding the pipeline that manages the collector itself).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable

FREEZE_EVERY = 1.0
FULL_EVERY = 60.0
EARLY_PASS_BYTES = 256 * 1024 * 1024


def resident_bytes() -> int | None:
    """This process's resident set now (Linux); None where /proc does not say."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class CollectorPacing:
    """`await run()` for the length of a run; cancel it at the end (it unfreezes then)."""

    def __init__(self, freeze_every: float | None = None, full_every: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 resident: Callable[[], int | None] = resident_bytes) -> None:
        self.freeze_every = FREEZE_EVERY if freeze_every is None else freeze_every
        self.full_every = FULL_EVERY if full_every is None else full_every
        self._clock = clock
        self._resident = resident
        self.full_passes = 0

    async def run(self) -> None:
        if not gc.isenabled() or gc.get_freeze_count():
            return  # the collector is someone else's to manage
        last_full, size_then = self._clock(), self._resident()
        try:
            while True:
                await asyncio.sleep(self.freeze_every)
                size = self._resident()
                grown = size is not None and size_then is not None and \
                    size - size_then >= EARLY_PASS_BYTES
                if grown or self._clock() - last_full >= self.full_every:
                    self.full_pass()
                    last_full, size_then = self._clock(), self._resident()
                gc.freeze()
        finally:
            gc.unfreeze()  # what outlives the run is the collector's again

    def full_pass(self) -> None:
        """Unfreeze everything and collect it all: the cyclic garbage of the last while."""
        gc.unfreeze()
        gc.collect()
        self.full_passes += 1
