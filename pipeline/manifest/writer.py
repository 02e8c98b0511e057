"""Every manifest call of a run on one dedicated thread, writes that arrive together committed
as one transaction.

SQLite commits with `synchronous=FULL` wait for the disk. On the event loop they would stall
every request in flight; one per document they would cap a run at the disk's fsync rate. Here the
loop only waits for its own call's commit, and a commit covers every write queued meanwhile
(group commit): durability per call, at a fraction of the fsyncs.

The event loop reaches the manifest through `AsyncManifest` (`await manifest.claim(...)`); the
`Manifest` object itself is then touched only by the writer thread until `stop()`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from pipeline.manifest.database import Manifest, PlannedDocument
from pipeline.manifest.rows import NewStat, SkippedFile
from pipeline.manifest.states import EnqueueVerdict

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


def _settle_all(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in results:
        _settle(future, result, None)


class ManifestWriter:
    def __init__(self, manifest: Manifest, max_batch: int = 256) -> None:
        self.manifest = manifest
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="ocr-manifest", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

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
        # One wake-up of the loop for the whole batch, not one per call.
        self._loop.call_soon_threadsafe(_settle_all, results)


class AsyncManifest:
    """The manifest as the event loop sees it during a run: every call runs on the writer
    thread and returns once committed. The interface one document's job needs, and no SQL."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._writer = ManifestWriter(manifest)

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def record_plan_batch(self, todo: list[PlannedDocument], run_id: str, *,
                                skipped: Sequence[SkippedFile] = (),
                                restated: Sequence[NewStat] = ()) -> None:
        """One batch of the plan, one transaction (`Manifest.record_plan_batch`)."""
        await self._writer.run(self.manifest.record_plan_batch, todo, run_id, skipped=skipped,
                               restated=restated)

    async def claim(self, path: str, sha256: str, run_id: str, *, size: int | None = None,
                    mtime_ns: int | None = None, twins: int = 0) -> list[tuple[str, float]]:
        return await self._writer.run(self.manifest.claim, path, sha256, run_id, size=size,
                                      mtime_ns=mtime_ns, twins=twins)

    async def still_done(self, path: str, updated_at: float) -> bool:
        return await self._writer.run(self.manifest.still_done, path, updated_at)

    async def chunk_response(self, path: str, doc_sha256: str, first_page: int,
                             page_count: int) -> dict[str, Any] | None:
        return await self._writer.run(self.manifest.chunk_response, path, doc_sha256,
                                      first_page, page_count)

    async def content_response(self, doc_sha256: str, first_page: int, page_count: int, *,
                               not_path: str) -> tuple[str, dict[str, Any]] | None:
        return await self._writer.run(self.manifest.content_response, doc_sha256, first_page,
                                      page_count, not_path=not_path)

    async def checkpoint_chunk(self, path: str, doc_sha256: str, first_page: int,
                               page_count: int, chunk_sha256: str,
                               response: dict[str, Any]) -> None:
        await self._writer.run(self.manifest.checkpoint_chunk, path, doc_sha256, first_page,
                               page_count, chunk_sha256, response)

    async def finish(self, path: str, pages: int, cost: float) -> None:
        await self._writer.run(self.manifest.finish, path, pages, cost)

    async def fail(self, path: str, category: str, message: str, *, size: int = 0,
                   mtime_ns: int = 0) -> None:
        await self._writer.run(self.manifest.fail, path, category, message, size=size,
                               mtime_ns=mtime_ns)

    async def release(self, path: str) -> None:
        await self._writer.run(self.manifest.release, path)

    async def counts(self) -> dict[Any, int]:
        return await self._writer.run(self.manifest.counts)

    async def last_success(self) -> float | None:
        return await self._writer.run(self.manifest.last_success)

    # ---- batch mode (docs/batch.md): the same calls, on the writer thread ----------------------
    async def batch_call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Any `Manifest.batch_*` method, committed on the writer thread."""
        if not name.startswith("batch_"):
            raise AttributeError(name)
        return await self._writer.run(getattr(self.manifest, name), *args, **kwargs)

    async def batch_enqueue(self, path: str, first_page: int, page_count: int,
                            chunk_sha256: str, part_id: str, output_id: str
                            ) -> tuple[EnqueueVerdict, str]:
        return await self._writer.run(self.manifest.batch_enqueue, path, first_page, page_count,
                                      chunk_sha256, part_id, output_id)

    async def batch_answered(self, custom_id: str, response: dict[str, Any]
                             ) -> list[tuple[str, str]]:
        return await self._writer.run(self.manifest.batch_answered, custom_id, response)
