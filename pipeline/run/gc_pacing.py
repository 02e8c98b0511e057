"""The garbage collector's full passes, paced: one a minute instead of a stall every few seconds.

A run at R = 200 with latencies of seconds keeps ~2,000 requests and their documents alive at
once. Each lives long enough to reach the collector's oldest generation, so CPython ran a full
collection every ~6 s, and each walked every live object: 0.21-0.30 s with the event loop
stopped. The limiter catches up what a stall costs, but the bunched sends that make it up then
repeat every second (the window holds them), and a stall that hits one of those is lost: at
R = 200, L = 8 s the sends fell from 197 to 165-190 in those seconds (docs/performance.md).

So every FREEZE_EVERY seconds the objects alive are frozen (`gc.freeze()`: moved out of the
collector's reach; freeing by reference count goes on as before) and a full pass only walks
what survived since. Once every FULL_EVERY seconds everything is unfrozen and collected: cyclic
garbage lives at most that long (measured: ~75,000 objects a minute at R = 200, freed in one
0.4 s pass that the limiter's catch-up absorbs).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

FREEZE_EVERY = 1.0
FULL_EVERY = 60.0


class CollectorPacing:
    """`await run()` for the length of a run; cancel it at the end (`stop()` also unfreezes)."""

    def __init__(self, freeze_every: float | None = None, full_every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.freeze_every = FREEZE_EVERY if freeze_every is None else freeze_every
        self.full_every = FULL_EVERY if full_every is None else full_every
        self._clock = clock
        self.full_passes = 0

    async def run(self) -> None:
        last_full = self._clock()
        try:
            while True:
                await asyncio.sleep(self.freeze_every)
                if self._clock() - last_full >= self.full_every:
                    self.full_pass()
                    last_full = self._clock()
                gc.freeze()
        finally:
            gc.unfreeze()  # what outlives the run is the collector's again

    def full_pass(self) -> None:
        """Unfreeze everything and collect it all: the cyclic garbage of the last while."""
        gc.unfreeze()
        gc.collect()
        self.full_passes += 1
