"""The transport the document job sees in batch mode: `answer(chunk)` queues the chunk's request
line in a JSONL part file, records it in the manifest as submitted, and raises `ChunkDeferred`.

A chunk whose line is already in an open job is not queued again (a resumed run, a document
planned twice); a chunk whose content (document sha256 + page range) is already queued for another
path shares that line (content dedup). A chunk whose content is already answered never gets here:
the document job takes that answer first, as in sync mode (`DocumentJob._saved_answer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.backends.base import OCRResponse
from pipeline.backends.mistral import MistralBackend
from pipeline.budget import Budget
from pipeline.config import Settings
from pipeline.manifest.states import EnqueueVerdict
from pipeline.manifest.writer import AsyncManifest
from pipeline.models import Chunk
from pipeline.transport.base import ChunkDeferred
from pipeline.transport.batch.jsonl import PartWriter
from pipeline.transport.retry import RetryStats

CUSTOM_ID_BYTES = 120  # a line's bytes around its body: {"custom_id": "<~90>", "body": ...}


@dataclass
class SubmitTally:
    queued: int = 0  # lines written this run
    pages_queued: int = 0
    already: int = 0  # chunks found in an open job (an earlier run's)
    shared: int = 0  # the same content queued for another path: no second line
    pages_shared: int = 0


class BatchSubmitTransport:
    def __init__(self, settings: Settings, run_id: str, folder: Path, budget: Budget) -> None:
        self.settings = settings
        self.run_id = run_id
        self.budget = budget
        self.writer = PartWriter(folder, settings.batch.max_requests_per_job,
                                 settings.batch.max_file_bytes)
        self._bodies = MistralBackend.from_settings(settings)  # builds the request body, sends nothing
        self.db: AsyncManifest | None = None
        self.output_id = ""
        self.tally = SubmitTally()
        self.stopped = False
        self.uploaded_bytes = 0

    def bind(self, db: AsyncManifest, output_id: str) -> None:
        self.db, self.output_id = db, output_id

    def request_body(self, chunk: Chunk) -> dict[str, Any]:
        """The OCRRequest of a line: as a synchronous request, without `model` (the job's)."""
        body = self._bodies.request_body(chunk)
        body.pop("model", None)
        return body

    async def answer(self, chunk: Chunk) -> OCRResponse:
        assert self.db is not None, "bind() first"
        body = json.dumps(self.request_body(chunk), separators=(",", ":"))
        size = len(body) + CUSTOM_ID_BYTES
        part, new = self.writer.place(size)
        if new:
            await self.db.batch_call("batch_open_part", part.part_id, part.path.name, self.run_id)
        verdict, custom_id = await self.db.batch_enqueue(
            chunk.doc_rel, chunk.first_page, chunk.page_count, chunk.sha256, part.part_id,
            self.output_id)
        tally = self.tally
        if verdict != EnqueueVerdict.QUEUED:
            self.writer.unplace(part, size)
        if verdict == EnqueueVerdict.QUEUED:
            line = '{"custom_id":' + json.dumps(custom_id) + ',"body":' + body + "}\n"
            self.writer.write(part, line.encode("utf-8"))
            # Paid once the job runs: counted against --max-pages / --max-cost now.
            self.budget.spent += chunk.page_count
            tally.queued += 1
            tally.pages_queued += chunk.page_count
        elif verdict == EnqueueVerdict.SHARED:
            tally.shared += 1
            tally.pages_shared += chunk.page_count
        else:
            tally.already += 1
        raise ChunkDeferred()

    def stop(self) -> None:
        self.stopped = True

    @property
    def bytes_sent(self) -> int:
        return self.uploaded_bytes

    # The run's view (RunTransport): no synchronous requests here; the pool is sized by workers.
    stats = RetryStats()
    in_flight = 0

    def demand(self) -> int:
        return 0

    async def close(self) -> None:
        await self._bodies.close()
