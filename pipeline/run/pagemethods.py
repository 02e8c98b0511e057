"""Count how the local engine read each page (text layer or OCR) for the run summary.

The local engine says it per page (`method`: `text_layer` or `ocr`). This wraps the backend the
run uses and tallies every accepted answer into the run report, so the summary can say what
matters offline (pages from text layers vs pages OCR'd) without the run knowing about it.
"""

from __future__ import annotations

from typing import Any

from pipeline.backends.base import Backend, OCRResponse
from pipeline.models import Chunk
from pipeline.run.report import tally_page_methods


class PageMethodCounter:
    """A backend that passes every call to `inner` and counts, in `counts`, how the pages of
    each answer were read (give the run report this dict: `report.page_methods`)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.counts: dict[str, int] = {}

    async def ocr(self, chunk: Chunk) -> OCRResponse:
        response = await self.inner.ocr(chunk)
        pages = response.get("pages") if isinstance(response, dict) else None
        # An answer of the wrong length is rejected and asked again by the retry layer: not
        # counted here.
        if isinstance(pages, list) and len(pages) == chunk.page_count:
            tally_page_methods(self.counts, pages)
        return response

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
