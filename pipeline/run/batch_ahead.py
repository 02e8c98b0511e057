"""Items of batches made one batch ahead of their consumer.

The run plans its input a batch of files at a time (a trip to a thread for the walk, then one
to the manifest to record it). When the next batch was made only after the pool had opened the
last document of the one before, the pool waited for it up to a second at a time at R = 200
with 50-page documents (docs/performance.md). Here the next batch is made while the consumer
works through this one: one ahead, never more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def one_batch_ahead(next_batch: Callable[[], Awaitable[list[T] | None]],
                          stopping: Callable[[], bool], *, close_wait_s: float
                          ) -> AsyncIterator[T]:
    """The items of `next_batch()`'s batches, in order, until it returns None or `stopping()`.

    An error of `next_batch` reaches the consumer after the items before it. A batch being
    made when the consumer stops is finished, not cancelled (a walk cut mid-trip would have
    its files neither recorded nor opened), unless it takes over `close_wait_s` (a read that
    hangs on a dead network share): it is then given up on."""
    batches: asyncio.Queue[list[T] | None] = asyncio.Queue()
    wanted = asyncio.Event()  # the consumer started on the last batch: make the next one
    wanted.set()
    closing = False

    async def make_ahead() -> None:
        try:
            while True:
                await wanted.wait()
                wanted.clear()
                if closing or stopping():
                    return
                batch = await next_batch()
                if batch is None:
                    return
                batches.put_nowait(batch)
        finally:
            batches.put_nowait(None)

    maker = asyncio.create_task(make_ahead())
    try:
        while (batch := await batches.get()) is not None:
            wanted.set()
            for item in batch:
                yield item
        await maker  # its error, if it failed
    finally:
        closing = True
        wanted.set()
        try:
            await asyncio.wait([maker], timeout=close_wait_s)
        finally:  # also when cancelled again while it waits
            maker.cancel()
        if maker.done() and not maker.cancelled():
            maker.exception()  # it broke after the consumer stopped: nothing to do
