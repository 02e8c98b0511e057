"""The pool of open documents: it opens the next planned document while the transport has room
for its requests, runs each as one `DocumentJob`, and hands every result to the run.

How many documents are open is sized one of two ways. A fixed `workers` (the setting, the local
engine's processes, batch mode's line writers, a Dask cluster's threads) opens up to that many.
Otherwise the transport's `demand()` (requests it wants ready, by Little's law) decides, less the
documents already opened that have not asked for an answer yet; a ceiling on open documents and
on their input bytes keeps memory bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.backends.base import OCRResponse
from pipeline.errors import FatalError
from pipeline.models import Chunk
from pipeline.run.document_job import DocumentJob, DocumentResult, JobContext
from pipeline.stages.plan import PlanItem
from pipeline.transport.base import RunTransport

MAX_OPEN_DOCUMENTS = 4096  # safety ceiling when the pool sizes itself
MAX_OPEN_BYTES = 256 * 1024 * 1024  # input bytes of open documents, beyond the first one
ROOM_POLL = 0.02  # seconds between looks for room when nothing finished (demand also grows)


class ReadinessWatch:
    """The pool's view of the transport: which open documents have not asked for an answer yet
    (still reading, claiming, cutting). The pool opens another document only while the transport
    wants more requests than these are about to bring (`demand() > len(getting_ready)`)."""

    def __init__(self, inner: RunTransport) -> None:
        self.inner = inner
        self.getting_ready: set[str] = set()

    async def answer(self, chunk: Chunk) -> OCRResponse:
        self.getting_ready.discard(chunk.doc_rel)
        return await self.inner.answer(chunk)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class PoolHooks:
    """What the pool tells the run (the pool holds no report of its own)."""

    stopping: Callable[[], bool]
    on_result: Callable[[DocumentResult], None]
    on_interrupted: Callable[[], None]  # a document cancelled or cut short by a fatal error
    on_fatal: Callable[[FatalError], None]  # stop everything now
    on_plan_error: Callable[[Exception], None]  # the plan broke: stop opening documents


class DocumentPool:
    def __init__(self, transport: RunTransport, hooks: PoolHooks, *, workers: int | None,
                 cluster_processes: Callable[[], int] | None = None) -> None:
        """`workers`: a fixed number of open documents, or None for the transport's demand.
        `cluster_processes`: the Dask cluster's threads now, when it sizes the pool (twice
        that many open documents: more open as workers join)."""
        self.transport = transport
        self.watch = ReadinessWatch(transport)
        self.hooks = hooks
        self.workers = workers
        self.cluster_processes = cluster_processes
        self.tasks: set[asyncio.Task[Any]] = set()

    def room_for(self, open_bytes: int) -> bool:
        """May one more document be opened now?"""
        open_count = len(self.tasks)
        if open_count == 0:
            return True
        if self.cluster_processes is not None:
            return open_count < 2 * self.cluster_processes()
        if self.workers:
            return open_count < self.workers
        if open_count >= MAX_OPEN_DOCUMENTS or open_bytes >= MAX_OPEN_BYTES:
            return False
        return self.transport.demand() > len(self.watch.getting_ready)

    async def run(self, todo: AsyncIterator[PlanItem], ctx: JobContext) -> Exception | None:
        """Open documents as there is room; return when every opened one has ended. A fatal
        error stops the run at once (`on_fatal`); an error of the plan itself is handed to
        `on_plan_error` (the open documents end first) and returned."""
        changed = asyncio.Event()  # a document finished: there may be room again
        open_bytes = 0  # input bytes of the open documents (thousands may be open)
        stopping = self.hooks.stopping
        plan_error: Exception | None = None

        def done(task: asyncio.Task[Any], rel: str, size: int) -> None:
            nonlocal open_bytes
            self.tasks.discard(task)
            open_bytes -= size
            self.watch.getting_ready.discard(rel)
            changed.set()

        try:
            async with contextlib.aclosing(todo) as planned:
                async for item in planned:
                    while not self.room_for(open_bytes) and not stopping():
                        changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), ROOM_POLL)
                    if stopping():
                        break
                    task = asyncio.create_task(self._document(ctx, item))
                    self.tasks.add(task)
                    open_bytes += item.source.size
                    self.watch.getting_ready.add(item.source.rel)
                    task.add_done_callback(functools.partial(done, rel=item.source.rel,
                                                             size=item.source.size))
        except FatalError as exc:
            self.hooks.on_fatal(exc)
        except Exception as exc:  # planning broke: the open documents end, then the run decides
            plan_error = exc
            self.hooks.on_plan_error(exc)
        results = await asyncio.gather(*list(self.tasks), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError | FatalError
            ):
                raise result
        return plan_error

    async def _document(self, ctx: JobContext, item: PlanItem) -> None:
        try:
            result = await DocumentJob(ctx, item).run()
        except asyncio.CancelledError:
            self.hooks.on_interrupted()
            raise
        except FatalError as exc:  # also from the manifest itself (disk full)
            self.hooks.on_interrupted()
            self.hooks.on_fatal(exc)
            return
        self.hooks.on_result(result)

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
