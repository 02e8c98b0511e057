"""The batch-mode tables of the manifest (docs/batch.md): request-line parts and their jobs,
chunks submitted in them, answers and failed lines. Mixed into `Manifest`: the same connection,
the same thread rules and transactions."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from pipeline import jsonio
from pipeline.manifest.rows import DOCUMENT_COLUMNS, DocumentRow
from pipeline.manifest.states import (
    OPEN_BATCH_JOBS,
    BatchJobState,
    ChunkState,
    DocState,
    EnqueueVerdict,
    SubmittedState,
    batch_job_sources,
    sources,
    sql_in,
)


class BatchLedger:
    """Batch mode's SQL. The host (`Manifest`) provides the connection and its transactions."""

    _db: sqlite3.Connection

    def _tx(self, sql: str, params: Iterable[Any] = ()) -> None:
        raise NotImplementedError  # Manifest's

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # Manifest's

    # ---- batch mode (docs/batch.md) -----------------------------------------------------------
    def batch_output_id(self) -> str:
        """This output folder's stable id, made on first use: it names the output in every
        request line's custom_id and in its jobs' metadata."""
        import secrets

        row = self._db.execute("SELECT value FROM batch_meta WHERE key='output_id'").fetchone()
        if row:
            return str(row[0])
        self._tx("INSERT OR IGNORE INTO batch_meta (key, value) VALUES ('output_id', ?)",
                 (secrets.token_hex(8),))
        return str(self._db.execute("SELECT value FROM batch_meta WHERE key='output_id'"
                                    ).fetchone()[0])

    def batch_open_part(self, part_id: str, file: str, run_id: str) -> None:
        now = time.time()
        self._tx("INSERT INTO batch_jobs (part_id, file, state, run_id, created_at, updated_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (part_id, file, BatchJobState.WRITING, run_id, now, now))

    def batch_enqueue(self, path: str, first_page: int, page_count: int, chunk_sha256: str,
                      part_id: str, output_id: str
                      ) -> tuple[EnqueueVerdict, str]:
        """Record a chunk as submitted in `part_id`, unless it need not be: returns
        (ALREADY, custom_id) when its line is in a job still open, (SHARED, custom_id) when the
        same content's line is in an open job for another path (content dedup: one request),
        else (QUEUED, custom_id): write its line into `part_id`. (An answer already at hand for
        the same content was taken by the document job before it asked.)"""
        row = self._db.execute("SELECT sha256 FROM documents WHERE path=?", (path,)).fetchone()
        if not row or not row[0]:
            raise ValueError(f"{path}: not claimed, no content hash")
        sha = str(row[0])
        # The format `transport/batch/customid.py` parses back (its tests check both ways).
        custom_id = f"{output_id}.{sha}.{first_page}.{page_count}"
        open_states = sql_in(tuple(s.value for s in OPEN_BATCH_JOBS))
        mine = self._db.execute(
            "SELECT c.state FROM batch_chunks c JOIN batch_jobs j ON j.part_id=c.part_id"
            " WHERE c.path=? AND c.doc_sha256=? AND c.first_page=? AND c.page_count=?"
            f" AND (c.state=? OR j.state IN {open_states})",
            (path, sha, first_page, page_count, SubmittedState.ANSWERED)).fetchone()
        if mine:
            return EnqueueVerdict.ALREADY, custom_id
        other = self._db.execute(
            "SELECT c.part_id FROM batch_chunks c JOIN batch_jobs j ON j.part_id=c.part_id"
            f" WHERE c.custom_id=? AND c.state=? AND j.state IN {open_states} LIMIT 1",
            (custom_id, SubmittedState.QUEUED)).fetchone()
        verdict = EnqueueVerdict.SHARED if other else EnqueueVerdict.QUEUED
        self._tx(
            "INSERT OR REPLACE INTO batch_chunks (path, doc_sha256, first_page, page_count,"
            " chunk_sha256, custom_id, part_id, state, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (path, sha, first_page, page_count, chunk_sha256, custom_id,
             other[0] if other else part_id, SubmittedState.QUEUED, time.time()))
        return verdict, custom_id

    def _batch_move(self, part_id: str, target: BatchJobState, **values: Any) -> bool:
        sets = "".join(f", {k}=?" for k in values)
        cur = self._db.execute(
            f"UPDATE batch_jobs SET state=?, updated_at=?{sets} WHERE part_id=?"
            f" AND state IN {sql_in(batch_job_sources(target))}",
            (target, time.time(), *values.values(), part_id))
        return cur.rowcount == 1

    def batch_seal(self, part_id: str, requests: int, size: int) -> None:
        with self._write():
            self._batch_move(part_id, BatchJobState.SEALED, requests=requests, bytes=size)

    def batch_discard_unsealed(self) -> list[str]:
        """Parts a crash left half-written: never uploaded, so nothing was paid; their chunks go
        back to pending. Returns their files (to delete)."""
        with self._write() as db:
            rows = db.execute("SELECT part_id, file FROM batch_jobs WHERE state=?",
                              (BatchJobState.WRITING,)).fetchall()
            for part_id, _ in rows:
                db.execute("DELETE FROM batch_chunks WHERE part_id=? AND state=?",
                           (part_id, SubmittedState.QUEUED))
                self._batch_move(part_id, BatchJobState.DISCARDED, note="never sealed")
        return [r[1] for r in rows]

    def batch_uploaded(self, part_id: str, file_id: str) -> None:
        with self._write():
            self._batch_move(part_id, BatchJobState.UPLOADED, file_id=file_id)

    def batch_submitted(self, part_id: str, job_id: str, status: str, note: str | None = None
                        ) -> None:
        with self._write():
            self._batch_move(part_id, BatchJobState.SUBMITTED, job_id=job_id, status=status,
                             note=note)

    def batch_progress(self, part_id: str, status: str, completed: int, succeeded: int,
                       failed: int) -> None:
        self._tx("UPDATE batch_jobs SET status=?, completed=?, succeeded=?, failed=?, updated_at=?"
                 " WHERE part_id=?", (status, completed, succeeded, failed, time.time(), part_id))

    def batch_jobs(self, states: Iterable[BatchJobState]) -> list[dict[str, Any]]:
        wanted = sql_in(tuple(str(s) for s in states))
        rows = self._db.execute(
            "SELECT part_id, file, state, requests, bytes, file_id, job_id, status, completed,"
            " succeeded, failed, note, run_id, created_at FROM batch_jobs"
            f" WHERE state IN {wanted} ORDER BY created_at, part_id")
        keys = ("part_id", "file", "state", "requests", "bytes", "file_id", "job_id", "status",
                "completed", "succeeded", "failed", "note", "run_id", "created_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def batch_answered(self, custom_id: str, response: dict[str, Any]) -> list[tuple[str, str]]:
        """Checkpoint one downloaded answer for every path that awaits it (the same content in
        several paths is one request). Returns (path, job id) of each."""
        now = time.time()
        body = jsonio.compact(response)
        with self._write() as db:
            rows = db.execute(
                "SELECT c.path, c.doc_sha256, c.first_page, c.page_count, c.chunk_sha256,"
                " j.job_id FROM batch_chunks c JOIN batch_jobs j ON j.part_id=c.part_id"
                " WHERE c.custom_id=? AND c.state=?", (custom_id, SubmittedState.QUEUED)).fetchall()
            for path, sha, first, count, chunk_sha, _ in rows:
                db.execute(
                    "INSERT OR REPLACE INTO chunks (path, doc_sha256, first_page, page_count,"
                    " chunk_sha256, state, response, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (path, sha, first, count, chunk_sha, ChunkState.DONE, body, now))
            db.execute("UPDATE batch_chunks SET state=?, updated_at=? WHERE custom_id=? AND state=?",
                       (SubmittedState.ANSWERED, now, custom_id, SubmittedState.QUEUED))
        return [(r[0], r[5]) for r in rows]

    def batch_line_failed(self, custom_id: str, category: str, message: str) -> list[str]:
        """A failed line fails the documents awaiting it (the chunk is no longer submitted:
        --retry-failed sends it again, and only it)."""
        with self._write() as db:
            paths = [r[0] for r in db.execute(
                "SELECT path FROM batch_chunks WHERE custom_id=? AND state=?",
                (custom_id, SubmittedState.QUEUED))]
            db.execute("DELETE FROM batch_chunks WHERE custom_id=? AND state=?",
                       (custom_id, SubmittedState.QUEUED))
            for path in paths:
                text = message if message.startswith(path) else f"{path}: {message}"
                db.execute(
                    "UPDATE documents SET state=?, error_category=?, error_message=?, updated_at=?"
                    f" WHERE path=? AND state IN {sql_in(sources(DocState.FAILED))}",
                    (DocState.FAILED, category, text, time.time(), path))
        return paths

    def batch_close(self, part_id: str, target: BatchJobState, status: str | None,
                    note: str | None = None) -> int:
        """The job is over (COLLECTED or ENDED): its chunks still awaiting an answer go back to
        pending (the next submission sends them again). Returns how many."""
        with self._write() as db:
            cur = db.execute("DELETE FROM batch_chunks WHERE part_id=? AND state=?",
                             (part_id, SubmittedState.QUEUED))
            self._batch_move(part_id, target, status=status, note=note)
        return cur.rowcount

    def batch_jobs_of(self, paths: list[str]) -> dict[str, set[str]]:
        """Jobs whose answers await assembly for these paths (a page of documents at a time,
        so the run never holds them for the whole output)."""
        out: dict[str, set[str]] = {}
        for start in range(0, len(paths), 500):  # under SQLite's bound-variable limit
            some = paths[start:start + 500]
            rows = self._db.execute(
                "SELECT c.path, j.job_id FROM batch_chunks c JOIN batch_jobs j"
                f" ON j.part_id=c.part_id WHERE c.state=? AND c.path IN ({','.join('?' * len(some))})",
                (SubmittedState.ANSWERED, *some))
            for path, job_id in rows:
                out.setdefault(path, set()).add(job_id)
        return out

    def batch_forget_done(self) -> None:
        """Submission rows of documents now done are history: drop them."""
        self._tx("DELETE FROM batch_chunks WHERE path IN (SELECT path FROM documents"
                 " WHERE state=?)", (DocState.DONE,))

    def batch_ready_documents(self, after: str, limit: int) -> list[DocumentRow]:
        """Pending documents with no chunk awaiting an answer: their answers are all in (to
        assemble), or some chunks must be sent again. In path order, `limit` after `after`."""
        rows = self._db.execute(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.state=? AND d.path > ?"
            " AND NOT EXISTS (SELECT 1 FROM batch_chunks c WHERE c.path=d.path AND c.state=?)"
            " ORDER BY d.path LIMIT ?",
            (DocState.PENDING, after, SubmittedState.QUEUED, limit))
        return [DocumentRow.from_sql(r) for r in rows]
