"""The seam between a document's job and however its chunks get answered.

A transport takes one chunk and returns its OCR response, checked. The synchronous path
(`SyncTransport`: rate limiter, retry policy, an HTTP or local backend) is one; a batch job or a
remote executor is another. The document job only sees this interface.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.backends.base import OCRResponse
from pipeline.models import Chunk


class ChunkTransport(Protocol):
    async def answer(self, chunk: Chunk) -> OCRResponse:
        """The chunk's response, or one of `pipeline.errors`' exceptions: `RetryableError`
        (gave up after the policy's tries), `DocumentError` (the document is at fault),
        `FatalError` (stop the run), `StopRequested` (the run is stopping)."""
        ...

    async def close(self) -> None: ...
