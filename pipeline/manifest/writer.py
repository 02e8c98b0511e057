"""Every manifest call of a run on one dedicated thread, writes that arrive together committed
as one transaction.

SQLite commits with `synchronous=FULL` wait for the disk. On the event loop they would stall
every request in flight; one per document they would cap a run at the disk's fsync rate. Here the
loop only waits for its own call's commit, and a commit covers every write queued meanwhile
(group commit): durability per call, at a fraction of the fsyncs.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from pipeline.manifest.database import Manifest

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ManifestWriter:
    def __init__(self, manifest: Manifest, max_batch: int = 256) -> None:
        self.manifest = manifest
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="ocr-manifest", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a Manifest method on the manifest thread; return once it is committed."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, kwargs, future))
        return await future

    async def stop(self) -> None:
        if self._loop is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        assert self._loop is not None
        try:
            with self.manifest.batch():
                results = [(job[3], job[0](*job[1], **job[2])) for job in batch]
        except Exception as exc:
            if len(batch) > 1:
                for job in batch:  # one bad call must not fail the others: redo them alone
                    self._run_batch([job])
                return
            self._loop.call_soon_threadsafe(_settle, batch[0][3], None, exc)
            return
        self.commits += 1
        for future, result in results:
            self._loop.call_soon_threadsafe(_settle, future, result, None)
