"""The backend interface every OCR engine implements."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.errors import RetryableError
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
    bytes_sent: int  # request bytes sent so far (0 for an engine on this machine)

    async def ocr(self, chunk: Chunk) -> OCRResponse: ...

    async def close(self) -> None: ...


def check_response(chunk: Chunk, response: Any) -> dict[str, Any]:
    """Reject an answer that cannot be right for this chunk (retryable: the next try may be fine).

    A page whose text never came must never be written as an empty page, so a short answer is an
    error, not a document with missing pages.
    """
    if not isinstance(response, dict) or not isinstance(response.get("pages"), list):
        raise RetryableError("service answered 200 without a `pages` list")
    pages = response["pages"]
    if len(pages) != chunk.page_count:
        raise RetryableError(
            f"service answered {len(pages)} pages for a chunk of {chunk.page_count}"
        )
    for i, page in enumerate(pages):
        if not isinstance(page, dict) or not isinstance(page.get("markdown"), str):
            raise RetryableError(f"page {i} of the answer has no markdown text")
        if not isinstance(page.get("index", i), int):
            raise RetryableError(f"page {i} of the answer has a non-integer index")
    return response
