"""An asyncio event loop on virtual time: it never blocks, it jumps to the next timer.

`asyncio.sleep`, `wait_for` and `call_later` all work, instantly, so the rate limiter can be
driven through minutes of a simulated server in a fraction of a second. `stall(seconds)`
moves the clock without running anything: an event loop busy elsewhere, so every timer fires
late. No real I/O happens on this loop.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("virtual loop: nothing scheduled and nothing ready (a deadlock)")
        if timeout > 0:
            self._loop.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now

    def stall(self, seconds: float) -> None:
        """The loop was busy for `seconds`: time passes, nothing runs."""
        self.now += seconds


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 1000.0) -> T:
    loop = VirtualLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
