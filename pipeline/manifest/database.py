"""The resumable manifest: one SQLite (WAL) file, one row per document and one per chunk.

All SQL of the project lives here (batch mode's tables in `batch_ledger.py`, mixed in), behind a
small interface (record the plan, claim, checkpoint a chunk, finish, fail, query). The states
and their allowed moves are in `pipeline.manifest.states`: every write names its target state
and moves only rows in a state allowed to reach it (a move that is not allowed changes nothing).
A chunk's response is committed the moment it arrives: a resumed run reuses it instead of paying
for it again.

Threads: a `Manifest` object is used by one thread at a time. During a run that is the manifest
writer's thread (`pipeline.manifest.writer`, reached from the event loop through `AsyncManifest`);
before and after the pool, the event loop's thread; the planner's thread has its own read-only
connection (`Manifest.reader`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline import jsonio
from pipeline.errors import FatalError
from pipeline.manifest.batch_ledger import BatchLedger
from pipeline.manifest.rows import (
    DOCUMENT_COLUMNS,
    DocumentRow,
    NewStat,
    PlannedDocument,
    SkippedFile,
)
from pipeline.manifest.states import (
    BatchJobState,
    ChunkState,
    DocState,
    SubmittedState,
    check_constraint,
    sources,
    sql_in,
)


class ManifestError(FatalError):
    """The manifest cannot be read or written: stop the run (exit 3), resumable."""


class IllegalMove(RuntimeError):
    """A move the state machine does not allow (`states.TRANSITIONS`): a bug, recorded against
    its document as an internal error."""


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS documents (
    path TEXT PRIMARY KEY,
    sha256 TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    media_type TEXT,
    state TEXT NOT NULL {check_constraint(DocState)},
    attempts INTEGER NOT NULL DEFAULT 0,
    error_category TEXT,
    error_message TEXT,
    pages INTEGER,
    cost REAL,
    run_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_state ON documents (state);
-- Content dedup across runs: finished documents of this content.
CREATE INDEX IF NOT EXISTS documents_sha256 ON documents (sha256);
CREATE TABLE IF NOT EXISTS chunks (
    path TEXT NOT NULL,
    doc_sha256 TEXT NOT NULL,
    first_page INTEGER NOT NULL,
    page_count INTEGER NOT NULL,
    chunk_sha256 TEXT NOT NULL,
    state TEXT NOT NULL {check_constraint(ChunkState)},
    response TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (path, doc_sha256, first_page, page_count)
);
-- Content dedup: the answer for these pages of this content, whatever the path.
CREATE INDEX IF NOT EXISTS chunks_content ON chunks (doc_sha256, first_page, page_count);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    exit_code INTEGER,
    summary TEXT
);
""" + f"""
CREATE TABLE IF NOT EXISTS batch_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    part_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    state TEXT NOT NULL {check_constraint(BatchJobState)},
    requests INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    file_id TEXT,
    job_id TEXT,
    status TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    note TEXT,
    run_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_chunks (
    path TEXT NOT NULL,
    doc_sha256 TEXT NOT NULL,
    first_page INTEGER NOT NULL,
    page_count INTEGER NOT NULL,
    chunk_sha256 TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    part_id TEXT NOT NULL,
    state TEXT NOT NULL {check_constraint(SubmittedState)},
    updated_at REAL NOT NULL,
    PRIMARY KEY (path, doc_sha256, first_page, page_count)
);
CREATE INDEX IF NOT EXISTS batch_chunks_custom_id ON batch_chunks (custom_id);
CREATE INDEX IF NOT EXISTS batch_chunks_part ON batch_chunks (part_id, state);
"""


class Manifest(BatchLedger):
    """The run's memory: one connection, used by one thread at a time (see the module's doc)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._in_batch = False
        with self._errors("open"):
            # Used by one thread at a time: the loop's while planning and reporting, the
            # manifest writer's (pipeline.manifest.writer) while documents are processed.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Nothing yet: the schema above is version 1."""

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """A manifest that cannot be written (disk full, read-only, corrupt) stops the run:
        every document would be lost work otherwise."""
        try:
            yield
        except sqlite3.Error as exc:
            raise ManifestError(
                f"cannot {action} the manifest {self.path}: {exc}",
                hint="free disk space or fix the output folder; the run is resumable",
            ) from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self._in_batch:  # part of a batch's transaction (see batch())
            with self._errors("write to"):
                yield self._db
            return
        with self._errors("write to"), self._db:
            self._db.execute("BEGIN IMMEDIATE")
            yield self._db

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run several calls in one transaction: one commit (and one fsync) for all of them."""
        with self._write():
            outer, self._in_batch = self._in_batch, True  # a batch inside a batch joins it
            try:
                yield
            finally:
                self._in_batch = outer

    def _tx(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self._write() as db:
            db.execute(sql, tuple(params))

    # ---- planning ---------------------------------------------------------------------------
    def all_documents(self) -> dict[str, DocumentRow]:
        rows = self._db.execute(f"SELECT {DOCUMENT_COLUMNS} FROM documents")
        return {r[0]: DocumentRow.from_sql(r) for r in rows}

    def lookup(self, path: str) -> DocumentRow | None:
        row = self._db.execute(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE path=?", (path,)
        ).fetchone()
        return DocumentRow.from_sql(row) if row else None

    @classmethod
    def reader(cls, path: Path) -> Manifest:
        """A second, read-only connection (WAL lets it read while the writer commits): for the
        planner's look-ups in its own thread."""
        reader = cls.__new__(cls)
        reader.path = path
        reader._in_batch = False
        with reader._errors("open"):
            reader._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                         check_same_thread=False)
        return reader

    def record_plan(self, todo: list[PlannedDocument], run_id: str) -> None:
        """Mark every document this run will work on as pending, in one transaction."""
        now = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT INTO documents (path, size, mtime_ns, media_type, state, run_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (path) DO UPDATE SET size=excluded.size,"
                " mtime_ns=excluded.mtime_ns, media_type=excluded.media_type, state=excluded.state,"
                " run_id=excluded.run_id, updated_at=excluded.updated_at"
                f" WHERE documents.state IN {sql_in(sources(DocState.PENDING))}",
                [(d.path, d.size, d.mtime_ns, d.media_type, DocState.PENDING, run_id, now, now)
                 for d in todo],
            )

    def record_plan_batch(self, todo: list[PlannedDocument], run_id: str, *,
                          skipped: Sequence[SkippedFile] = (),
                          restated: Sequence[NewStat] = ()) -> None:
        """One batch of the plan in one transaction: the files it skips (failed), the unchanged
        ones whose stat moved, and the documents to work on (pending). One commit for the
        batch, not one per file: a tree copied again moves every file's mtime."""
        with self.batch():
            for skip in skipped:
                self.fail(skip.path, skip.category, skip.message, size=skip.size,
                          mtime_ns=skip.mtime_ns)
            for stat in restated:
                self.touch_unchanged(stat.path, stat.size, stat.mtime_ns)
            if todo:
                self.record_plan(todo, run_id)

    def touch_unchanged(self, path: str, size: int, mtime_ns: int) -> None:
        """A file whose mtime moved but whose content hash did not: remember the new stat."""
        self._tx(
            "UPDATE documents SET size=?, mtime_ns=?, updated_at=? WHERE path=?",
            (size, mtime_ns, time.time(), path),
        )

    # ---- one document's life ----------------------------------------------------------------
    def claim(self, path: str, sha256: str, run_id: str, *, size: int | None = None,
              mtime_ns: int | None = None, twins: int = 0) -> list[tuple[str, float]]:
        """Mark a document running, with the hash (and stat) of the content actually read.
        Returns up to `twins` finished documents of the same content (`done_twins`), looked up
        in the same trip."""
        with self._write() as db:
            self._move(db, path, DocState.RUNNING,
                       "UPDATE documents SET state=?, sha256=?, attempts=attempts+1, run_id=?,"
                       " size=COALESCE(?, size), mtime_ns=COALESCE(?, mtime_ns), updated_at=?",
                       (DocState.RUNNING, sha256, run_id, size, mtime_ns, time.time()))
        return self.done_twins(sha256, not_path=path, limit=twins) if twins > 0 else []

    def _move(self, db: sqlite3.Connection, path: str, target: DocState, update: str,
              values: tuple[Any, ...]) -> None:
        """One document's move to `target`, only from the states `TRANSITIONS` allows: any
        other (a document not planned, or in a state it cannot leave that way) is a bug, and
        raises instead of passing silently."""
        cur = db.execute(f"{update} WHERE path=? AND state IN {sql_in(sources(target))}",
                         (*values, path))
        if cur.rowcount != 1:
            row = db.execute("SELECT state FROM documents WHERE path=?", (path,)).fetchone()
            raise IllegalMove(f"{path}: cannot move from {row[0] if row else 'no row'} to {target}")

    def chunk_response(
        self, path: str, doc_sha256: str, first_page: int, page_count: int
    ) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT response FROM chunks WHERE path=? AND doc_sha256=? AND first_page=?"
            " AND page_count=? AND state=? AND response IS NOT NULL",
            (path, doc_sha256, first_page, page_count, ChunkState.DONE),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def content_response(self, doc_sha256: str, first_page: int, page_count: int, *,
                         not_path: str) -> tuple[str, dict[str, Any]] | None:
        """Content dedup: the answer to these pages of a document with this content, got for
        another path in this run (answers of finished documents are kept until the run ends),
        as (that path, answer)."""
        row = self._db.execute(
            "SELECT path, response FROM chunks WHERE doc_sha256=? AND first_page=?"
            " AND page_count=? AND path<>? AND response IS NOT NULL LIMIT 1",
            (doc_sha256, first_page, page_count, not_path),
        ).fetchone()
        return (str(row[0]), json.loads(row[1])) if row else None

    def done_twins(self, sha256: str, *, not_path: str, limit: int) -> list[tuple[str, float]]:
        """Finished documents of this content other than `not_path`, newest first, as (path,
        when it was finished) (content dedup across runs: their stored outputs may make this
        one)."""
        rows = self._db.execute(
            "SELECT path, updated_at FROM documents WHERE sha256=? AND state=? AND path<>?"
            " ORDER BY updated_at DESC LIMIT ?",
            (sha256, DocState.DONE, not_path, limit)).fetchall()
        return [(str(r[0]), float(r[1])) for r in rows]

    def still_done(self, path: str, updated_at: float) -> bool:
        """`path` is finished and untouched since `updated_at` (a document rewritten meanwhile
        was claimed first, which moves its `updated_at`)."""
        row = self._db.execute("SELECT state, updated_at FROM documents WHERE path=?",
                               (path,)).fetchone()
        return bool(row) and row[0] == DocState.DONE and float(row[1]) == updated_at

    def checkpoint_chunk(
        self,
        path: str,
        doc_sha256: str,
        first_page: int,
        page_count: int,
        chunk_sha256: str,
        response: dict[str, Any],
    ) -> None:
        self._tx(
            "INSERT OR REPLACE INTO chunks (path, doc_sha256, first_page, page_count,"
            " chunk_sha256, state, response, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (path, doc_sha256, first_page, page_count, chunk_sha256, ChunkState.DONE,
             jsonio.compact(response), time.time()),
        )

    def finish(self, path: str, pages: int, cost: float) -> None:
        """The document's outputs are in place: mark it done and drop its chunk bodies."""
        now = time.time()
        with self._write() as db:
            self._move(db, path, DocState.DONE,
                       "UPDATE documents SET state=?, pages=?, cost=?, error_category=NULL,"
                       " error_message=NULL, updated_at=?", (DocState.DONE, pages, cost, now))
            # The answers stay until the run ends: a document of the same content met later in
            # this run is made from them instead of paying again (content dedup).
            db.execute(
                "UPDATE chunks SET state=?, updated_at=? WHERE path=?",
                (ChunkState.MERGED, now, path),
            )

    def fail(self, path: str, category: str, message: str, *, size: int = 0,
             mtime_ns: int = 0) -> None:
        now = time.time()
        self._tx(
            "INSERT INTO documents (path, size, mtime_ns, state, attempts, error_category,"
            " error_message, created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET state=excluded.state,"
            " error_category=excluded.error_category,"
            " error_message=excluded.error_message, updated_at=excluded.updated_at,"
            " size=CASE WHEN excluded.size > 0 THEN excluded.size ELSE documents.size END,"
            " mtime_ns=CASE WHEN excluded.mtime_ns > 0 THEN excluded.mtime_ns"
            " ELSE documents.mtime_ns END",
            (path, size, mtime_ns, DocState.FAILED, category, message, now, now),
        )

    def release(self, path: str) -> None:
        """An interrupted document goes back to pending: the next run resumes it."""
        self._tx(
            "UPDATE documents SET state=?, updated_at=? WHERE path=? AND state=?",
            (DocState.PENDING, time.time(), path, DocState.RUNNING),
        )

    # ---- runs and queries -------------------------------------------------------------------
    def start_run(self, run_id: str) -> None:
        self._tx("INSERT INTO runs (run_id, started_at) VALUES (?, ?)", (run_id, time.time()))
        # A crash leaves rows 'running': they are resumable work, not in progress.
        self._tx("UPDATE documents SET state=? WHERE state=?", (DocState.PENDING, DocState.RUNNING))
        self.drop_merged_answers()  # left by a run that was killed

    def finish_run(self, run_id: str, exit_code: int, summary: dict[str, Any]) -> None:
        self._tx(
            "UPDATE runs SET finished_at=?, exit_code=?, summary=? WHERE run_id=?",
            (time.time(), exit_code, json.dumps(summary), run_id),
        )
        self.drop_merged_answers()

    def drop_merged_answers(self) -> None:
        """Answers of finished documents are in their outputs: drop them from the manifest."""
        self._tx("UPDATE chunks SET response=NULL WHERE state=? AND response IS NOT NULL",
                 (ChunkState.MERGED,))

    def counts(self) -> dict[DocState, int]:
        """Documents by state (states with no document are left out)."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM documents GROUP BY state")
        return {DocState(state): n for state, n in rows}

    def failures(self, limit: int = 1000) -> list[DocumentRow]:
        rows = self._db.execute(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE state=? ORDER BY path LIMIT ?",
            (DocState.FAILED, limit),
        )
        return [DocumentRow.from_sql(r) for r in rows]

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT run_id, started_at, finished_at, exit_code FROM runs"
            " ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )
        return [
            {"run_id": r[0], "started_at": r[1], "finished_at": r[2], "exit_code": r[3]}
            for r in rows
        ]

    def last_summary(self) -> dict[str, Any] | None:
        """The run report of the latest finished run."""
        row = self._db.execute("SELECT summary FROM runs WHERE summary IS NOT NULL"
                               " ORDER BY finished_at DESC LIMIT 1").fetchone()
        return json.loads(row[0]) if row else None

    def last_success(self) -> float | None:
        row = self._db.execute("SELECT MAX(updated_at) FROM documents WHERE state=?",
                               (DocState.DONE,)).fetchone()
        return row[0] if row else None

    def totals(self) -> dict[str, float]:
        row = self._db.execute(
            "SELECT COALESCE(SUM(pages), 0), COALESCE(SUM(cost), 0) FROM documents"
            " WHERE state=?", (DocState.DONE,)
        ).fetchone()
        return {"pages": row[0], "cost": row[1]}
