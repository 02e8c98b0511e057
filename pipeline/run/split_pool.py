"""The threads that cut PDFs into chunks, off the event loop.

qpdf (through pikepdf) is CPU work and may, on a hostile file, never return. A thread cannot be
killed: a split abandoned after a timeout gets a fresh pool beside it, and the process exits
without waiting for the stuck thread (see `has_stuck_threads`). The pool owns the run's `probes`
(another process, run/pdf_probes.py), which the event loop asks whether a PDF can go out as it
is before it is given to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.models import Chunk
from pipeline.run.pdf_probes import PdfProbes


class SplitPool:
    def __init__(self, threads: int, probes: PdfProbes | None = None) -> None:
        self.threads = threads
        self.probes = probes if probes is not None else PdfProbes()
        self._pool = ThreadPoolExecutor(threads, "ocr-split")
        self._abandoned: list[ThreadPoolExecutor] = []

    async def next_chunk(self, chunks: Iterator[Chunk]) -> Chunk | None:
        """The iterator's next chunk, cut in the pool; None when there are no more."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, next, chunks, None)
        except asyncio.CancelledError:
            if pool is self._pool:
                self._abandoned.append(pool)
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = ThreadPoolExecutor(self.threads, "ocr-split")
            raise

    def has_stuck_threads(self) -> bool:
        """True when a split abandoned after a timeout is still running."""
        return any(t.is_alive() for pool in self._abandoned for t in pool._threads)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.probes.close()
