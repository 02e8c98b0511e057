"""Batch jobs from sealed file to collected answers: upload, create (or adopt), poll, download,
match each line to its chunk by `custom_id`, checkpoint.

Every step is recorded in the manifest before the next one starts, and each step is safe to
redo after a kill: an upload not recorded is uploaded again (a file costs nothing); a job
created but not recorded is found again by its metadata (output id + part id) and adopted
instead of created twice; a download is started again (answers are checkpointed idempotently).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import crashpoints
from pipeline.errors import Category
from pipeline.logsetup import redact
from pipeline.manifest.states import BatchJobState
from pipeline.manifest.writer import AsyncManifest
from pipeline.transport.batch.client import TERMINAL, BatchClient, ResultsGone
from pipeline.transport.batch.customid import parse_custom_id

METADATA_OUTPUT = "ocr_pipeline_output"
METADATA_PART = "ocr_pipeline_part"
METADATA_RUN = "ocr_pipeline_run"


def line_category(status: int | None) -> Category:
    """The category a synchronous error of that status gets (pipeline.backends.mistral)."""
    if status in (408, 504):
        return Category.TIMEOUT
    if status == 413:
        return Category.TOO_LARGE
    if status is not None and 400 <= status < 500 and status not in (401, 403, 409, 425, 429):
        return Category.REJECTED
    return Category.BACKEND


@dataclass
class CollectTally:
    jobs_created: int = 0
    jobs_adopted: int = 0
    jobs_collected: int = 0
    jobs_ended: dict[str, int] = field(default_factory=dict)  # status -> jobs
    answers: int = 0
    pages_answered: int = 0
    lines_failed: int = 0
    returned_to_pending: int = 0  # chunks of ended jobs, sent again
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, category, message


class Collector:
    def __init__(self, client: BatchClient, db: AsyncManifest, output_id: str, run_id: str,
                 folder: Path, model: str, timeout_hours: int, log: Any) -> None:
        self.client = client
        self.db = db
        self.output_id = output_id
        self.run_id = run_id
        self.folder = folder
        self.model = model
        self.timeout_hours = timeout_hours
        self.log = log
        self.tally = CollectTally()
        # Jobs that answered the documents now going through the pool (run/batch_run.py `_with_jobs`).
        self.jobs_by_path: dict[str, set[str]] = {}
        self.progress: dict[str, tuple[int, int]] = {}  # part -> (completed, total)

    def metadata(self, part_id: str) -> dict[str, str]:
        return {METADATA_OUTPUT: self.output_id, METADATA_PART: part_id}

    # ---- submit ----------------------------------------------------------------------------
    async def submit_waiting(self) -> int:
        """Upload sealed parts and create (or adopt) their jobs. Returns jobs started."""
        started = 0
        for part in await self.db.batch_call("batch_jobs", [BatchJobState.SEALED]):
            crashpoints.reached("batch_before_upload")
            path = self.folder / part["file"]
            sent = await self.client.upload(path, f"ocr-pipeline-{part['part_id']}.jsonl")
            crashpoints.reached("batch_after_upload")
            await self.db.batch_call("batch_uploaded", part["part_id"], str(sent["id"]))
        for part in await self.db.batch_call("batch_jobs", [BatchJobState.UPLOADED]):
            started += await self._create_or_adopt(part)
            (self.folder / part["file"]).unlink(missing_ok=True)  # uploaded: not needed again
        return started

    async def _create_or_adopt(self, part: dict[str, Any]) -> int:
        part_id = part["part_id"]
        found = await self.client.list_jobs(self.metadata(part_id))
        if found:  # created by a run killed before it recorded the job's id
            job = min(found, key=lambda j: j.get("created_at") or 0)
            self.tally.jobs_adopted += 1
            self.log.warning("batch job adopted", job_id=job["id"], part=part_id,
                             message="a job created but not recorded (a run was killed): adopted,"
                                     " not created again")
            await self.db.batch_call("batch_submitted", part_id, str(job["id"]),
                                     str(job.get("status")), "adopted")
            return 0
        meta = {**self.metadata(part_id), METADATA_RUN: self.run_id}
        job = await self.client.create_job(part["file_id"], self.model, meta, self.timeout_hours)
        crashpoints.reached("batch_job_created")
        await self.db.batch_call("batch_submitted", part_id, str(job["id"]),
                                 str(job.get("status")))
        self.tally.jobs_created += 1
        self.log.info("batch job created", job_id=job["id"], requests=part["requests"])
        return 1

    # ---- poll and collect ------------------------------------------------------------------
    async def poll_once(self) -> tuple[int, bool]:
        """Poll every open job once and collect those that ended. Returns (jobs still open,
        whether any job moved)."""
        moved = False
        still_open = 0
        for part in await self.db.batch_call("batch_jobs", [BatchJobState.SUBMITTED]):
            job = await self.client.get_job(part["job_id"])
            crashpoints.reached("batch_polling")
            status = str(job.get("status"))
            done, total = int(job.get("completed_requests") or 0), int(job.get("total_requests") or 0)
            if self.progress.get(part["part_id"]) != (done, total) or part["status"] != status:
                moved = True
                self.progress[part["part_id"]] = (done, total)
                await self.db.batch_call("batch_progress", part["part_id"], status, done,
                                         int(job.get("succeeded_requests") or 0),
                                         int(job.get("failed_requests") or 0))
            if status in TERMINAL:
                await self._collect(part, job)
                moved = True
            else:
                still_open += 1
        return still_open, moved

    def requests_progress(self) -> tuple[int, int]:
        done = sum(d for d, _ in self.progress.values())
        total = sum(t for _, t in self.progress.values())
        return done, total

    async def _collect(self, part: dict[str, Any], job: dict[str, Any]) -> None:
        part_id, status = part["part_id"], str(job.get("status"))
        note = None
        try:
            for kind in ("output_file", "error_file"):
                if job.get(kind):
                    await self._read_results(part_id, str(job[kind]), kind, str(job["id"]))
        except ResultsGone as exc:
            note = f"results no longer downloadable ({exc}): unanswered chunks sent again"
        self.progress.pop(part_id, None)
        if status == "SUCCESS" and note is None:
            returned = await self.db.batch_call("batch_close", part_id, BatchJobState.COLLECTED,
                                                status)
            self.tally.jobs_collected += 1
        else:
            note = note or f"job ended {status}: unanswered chunks back to pending, sent again"
            returned = await self.db.batch_call("batch_close", part_id, BatchJobState.ENDED,
                                                status, note)
            self.tally.jobs_ended[status] = self.tally.jobs_ended.get(status, 0) + 1
            self.log.warning("batch job ended", job_id=job["id"], status=status,
                             chunks_returned=returned, message=note)
        self.tally.returned_to_pending += returned
        for suffix in ("output_file", "error_file"):
            (self.folder / f"{part_id}.{suffix}.jsonl").unlink(missing_ok=True)

    async def _read_results(self, part_id: str, file_id: str, kind: str, job_id: str) -> None:
        dest = self.folder / f"{part_id}.{kind}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)

        def downloading(_: int) -> None:
            crashpoints.reached("batch_downloading")

        await self.client.download(file_id, dest, downloading)
        with dest.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    await self._line(raw, job_id)

    async def _line(self, raw: bytes, job_id: str) -> None:
        try:
            line = json.loads(raw)
        except ValueError:
            self.log.warning("batch result line is not JSON: skipped", job_id=job_id)
            return
        if not isinstance(line, dict):
            return
        custom_id = line.get("custom_id")
        key = parse_custom_id(self.output_id, custom_id)
        if key is None:
            self.log.warning("batch result line of no chunk of this output: skipped",
                             job_id=job_id, custom_id=redact(str(custom_id))[:120])
            return
        response = line.get("response") if isinstance(line.get("response"), dict) else {}
        status = response.get("status_code")
        status = status if isinstance(status, int) else None
        body = response.get("body")
        error = line.get("error")
        ok = (not error and (status is None or status < 400) and isinstance(body, dict)
              and isinstance(body.get("pages"), list) and len(body["pages"]) == key.page_count)
        if ok:
            assert isinstance(body, dict)
            paths = await self.db.batch_answered(str(custom_id), body)
            if paths:  # not one already checkpointed by an earlier, interrupted download
                self.tally.answers += 1
                self.tally.pages_answered += key.page_count
            return
        category = line_category(status) if (status or error) else Category.BACKEND
        detail = _error_text(error, body, status)
        pages = f"pages {key.first_page + 1}-{key.first_page + key.page_count}"
        message = f"{pages}: batch job {job_id} answered {detail}"
        paths = await self.db.batch_call("batch_line_failed", str(custom_id), str(category),
                                         message)
        self.tally.lines_failed += 1
        for path in paths:
            self.tally.failures.append((path, str(category), f"{path}: {message}"))


def _error_text(error: Any, body: Any, status: int | None) -> str:
    if status is not None and status >= 400:
        detail = body.get("message") or body.get("detail") if isinstance(body, dict) else body
        return f"HTTP {status}: {redact(str(detail or error or ''))[:300]}"
    if error:
        text = error.get("message") if isinstance(error, dict) else error
        return f"an error: {redact(str(text))[:300]}"
    if isinstance(body, dict) and isinstance(body.get("pages"), list):
        return f"{len(body['pages'])} pages for the chunk's pages: not its answer"
    return "no usable answer"


def backoff(current: float, low: float, high: float, moved: bool) -> float:
    """The next poll interval: back to `low` when something moved, else 1.5x up to `high`."""
    return low if moved else min(high, max(low, current * 1.5))
