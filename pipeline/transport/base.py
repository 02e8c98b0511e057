"""The seam between a document's job and however its chunks get answered.

A transport takes one chunk and returns its OCR response, checked. The synchronous path
(`SyncTransport`: rate limiter, retry policy, an HTTP or local backend) is one; a batch job or a
remote executor is another. The document job only sees this interface: it knows that a
transport may answer later (`ChunkDeferred`), not which one does (batch mode's).
"""

from __future__ import annotations

from typing import Protocol

from pipeline.backends.base import OCRResponse
from pipeline.errors import StopRequested
from pipeline.models import Chunk
from pipeline.transport.retry import RetryStats


class ChunkDeferred(StopRequested):
    """A transport's "the answer comes later": the chunk is queued with a transport that answers
    asynchronously (a batch job, now or by an earlier run). Its answer will be checkpointed in
    the manifest when it arrives, maybe in a later run; the document goes back to pending, like
    a stop, with nothing lost."""


class ChunkTransport(Protocol):
    async def answer(self, chunk: Chunk) -> OCRResponse:
        """The chunk's response, or one of `pipeline.errors`' exceptions: `RetryableError`
        (gave up after the policy's tries), `DocumentError` (the document is at fault),
        `FatalError` (stop the run), `StopRequested` (the run is stopping), `ChunkDeferred`
        (queued: answered later)."""
        ...

    async def close(self) -> None: ...


class RunTransport(ChunkTransport, Protocol):
    """What the run reads of its transport, besides answers."""

    @property
    def stats(self) -> RetryStats: ...

    @property
    def bytes_sent(self) -> int: ...

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        ...

    def demand(self) -> int:
        """How many more requests it wants ready now (the pool opens documents for them)."""
        ...

    def stop(self) -> None:
        """No request not yet sent may start; those in flight finish."""
        ...
