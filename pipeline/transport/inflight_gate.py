"""The limiter's concurrency gate: at most `target()` callers past it at once, admitted in
arrival order. The target moves (Little's law: the rate and the latency change), so the gate
also looks again every GATE_TICK seconds while anyone waits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import suppress

from pipeline.errors import StopRequested

GATE_TICK = 0.1


class InFlightGate:
    def __init__(self, target: Callable[[], int]) -> None:
        self._target = target
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.permits = 0  # callers past the gate (pacing or in flight)

    async def enter(self) -> None:
        if not self._waiters and self.permits < self._target():
            self.permits += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._arm_timer()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.leave()  # admitted just as we were cancelled: give the place back
            with suppress(ValueError):
                self._waiters.remove(future)
            raise

    def leave(self) -> None:
        self.permits -= 1
        self.admit()

    def admit(self) -> None:
        """Let waiters through while there is room under the target (call when it may have
        grown)."""
        target = self._target()
        while self._waiters and self.permits < target:
            future = self._waiters.popleft()
            if not future.done():
                self.permits += 1
                future.set_result(None)

    def close(self) -> None:
        """Every waiter raises StopRequested."""
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(StopRequested())

    def _arm_timer(self) -> None:
        if self._timer is None and self._waiters:
            self._timer = asyncio.get_running_loop().call_later(GATE_TICK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.admit()
        self._arm_timer()
