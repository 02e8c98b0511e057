"""Content dedup within a run: documents with the same bytes are OCR'd once.

Two places hold an answer another path can take: a request still in flight for the same pages of
the same content (here: the followers wait for it instead of sending their own), and the manifest,
which keeps the answers of this run's documents until the run ends (`Manifest.content_response`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pipeline.backends.base import OCRResponse

ContentKey = tuple[str, int, int]  # the document's sha256, first page, page count


@dataclass
class InFlight:
    path: str  # the document whose request this is
    answer: asyncio.Future[OCRResponse]


class ContentShare:
    """The requests in flight, by content: a second document of the same content follows the
    first one's request instead of paying for its own."""

    def __init__(self) -> None:
        self._in_flight: dict[ContentKey, InFlight] = {}

    def leader(self, key: ContentKey) -> InFlight | None:
        return self._in_flight.get(key)

    def lead(self, key: ContentKey, path: str) -> InFlight:
        entry = InFlight(path, asyncio.get_running_loop().create_future())
        self._in_flight[key] = entry
        return entry

    def settle(self, key: ContentKey, entry: InFlight, response: OCRResponse | None,
               error: BaseException | None = None) -> None:
        """The leader's request ended: followers get its answer, or fall back to their own
        request when it failed (their document may still succeed: it is tried on its own)."""
        if self._in_flight.get(key) is entry:
            del self._in_flight[key]
        if entry.answer.done():
            return
        if response is not None:
            entry.answer.set_result(response)
        else:
            entry.answer.set_exception(error or asyncio.CancelledError())
            entry.answer.exception()  # retrieved: no "exception never retrieved" warning
