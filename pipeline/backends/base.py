"""The backend interface every OCR engine implements."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.models import Chunk

OCRResponse = dict[str, Any]


class Backend(Protocol):
    """A chunk in, an OCRResponse out.

    The response has Mistral's `OCRResponse` shape: `pages` (each with `index` 0-based within the
    chunk, `markdown`, `images`, `dimensions`), `model`, `usage_info`; unknown fields are kept.
    Implementations raise the classes of `pipeline.errors`:
    `RetryableError` (try again), `DocumentError` (this document is at fault), `FatalError`
    (stop the run).
    """

    name: str
    model: str

    async def ocr(self, chunk: Chunk) -> OCRResponse: ...

    async def close(self) -> None: ...
