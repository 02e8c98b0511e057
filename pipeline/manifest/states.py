"""The manifest's state machine: a document's states, a chunk's states, and the allowed moves.

```
             record_plan            claim              finish
  (none) ──────────────► PENDING ─────────► RUNNING ─────────► DONE
     │                     ▲  ▲               │ │                │
     │ fail (planning)     │  └── release ────┘ │ fail           │ record_plan
     ▼                     │   (stop, crash)    ▼                │ (changed file)
   FAILED                  └──────────────── FAILED      PENDING ◄┘
     └── record_plan (--retry-failed, changed file) ──► PENDING
```
A crash leaves rows RUNNING; the next run's `start_run` puts them back to PENDING. Every write
moves only rows in `sources(target)`; `claim` and `finish`, which move one named document, raise
`IllegalMove` when it is not in one of them.
Chunks: an answer is checkpointed as ChunkState.DONE the moment it arrives; when its document is
stored, its chunks become ChunkState.MERGED. Their answers stay until the run ends (a document of
the same content may take them: content dedup) and `finish_run` drops them.
"""

from __future__ import annotations

import enum


class DocState(enum.StrEnum):
    PENDING = "pending"  # planned by a run, not started (or released by a stop or a crash)
    RUNNING = "running"  # claimed by the run in progress
    DONE = "done"  # outputs stored
    FAILED = "failed"  # failed with a category and a message; left alone until retried


class ChunkState(enum.StrEnum):
    DONE = "done"  # the answer is stored in the row: a resumed run reuses it
    MERGED = "merged"  # the document is stored; the answer body is dropped


# Which states a document may move to from each state (None: no row yet).
TRANSITIONS: dict[DocState | None, frozenset[DocState]] = {
    None: frozenset({DocState.PENDING, DocState.FAILED}),
    DocState.PENDING: frozenset({DocState.PENDING, DocState.RUNNING, DocState.FAILED}),
    DocState.RUNNING: frozenset({DocState.DONE, DocState.FAILED, DocState.PENDING}),
    DocState.DONE: frozenset({DocState.PENDING, DocState.FAILED}),
    DocState.FAILED: frozenset({DocState.PENDING, DocState.FAILED}),
}

UNFINISHED = frozenset({DocState.PENDING, DocState.RUNNING})  # resumable work


def sources(target: DocState) -> tuple[str, ...]:
    """The states a document may be in to move to `target`, for a SQL `state IN (...)`."""
    return tuple(sorted(s.value for s, moves in TRANSITIONS.items() if s and target in moves))


def sql_in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def check_constraint(states: type[enum.StrEnum]) -> str:
    return "CHECK (state IN " + sql_in(tuple(s.value for s in states)) + ")"


# ---- batch mode (docs/batch.md) ----------------------------------------------------------------
class BatchJobState(enum.StrEnum):
    """One batch job's life, from its JSONL file on disk to its collected results."""

    WRITING = "writing"  # request lines being appended to its file
    SEALED = "sealed"  # file complete and synced; not uploaded yet
    UPLOADED = "uploaded"  # file id known; no job recorded (a crash here: the job is adopted)
    SUBMITTED = "submitted"  # job id recorded: the service is working on it
    COLLECTED = "collected"  # results downloaded, every answer checkpointed
    ENDED = "ended"  # FAILED / TIMEOUT_EXCEEDED / CANCELLED / results gone: chunks back to pending
    DISCARDED = "discarded"  # never sealed (a crash while writing): chunks back to pending


#: Jobs whose chunks are still on their way.
OPEN_BATCH_JOBS = frozenset({BatchJobState.WRITING, BatchJobState.SEALED, BatchJobState.UPLOADED,
                             BatchJobState.SUBMITTED})

BATCH_JOB_MOVES: dict[BatchJobState, frozenset[BatchJobState]] = {
    BatchJobState.WRITING: frozenset({BatchJobState.SEALED, BatchJobState.DISCARDED}),
    BatchJobState.SEALED: frozenset({BatchJobState.UPLOADED}),
    BatchJobState.UPLOADED: frozenset({BatchJobState.SUBMITTED, BatchJobState.UPLOADED}),
    BatchJobState.SUBMITTED: frozenset({BatchJobState.COLLECTED, BatchJobState.ENDED}),
    BatchJobState.COLLECTED: frozenset(),
    BatchJobState.ENDED: frozenset(),
    BatchJobState.DISCARDED: frozenset(),
}


class SubmittedState(enum.StrEnum):
    """A chunk sent as a batch request line. A chunk whose job ended without its answer, or whose
    line failed (its document then fails), has no row: it is not submitted."""

    QUEUED = "queued"  # its line is in a job's file, the answer is awaited
    ANSWERED = "answered"  # its answer is checkpointed in `chunks` (ChunkState.DONE)


def batch_job_sources(target: BatchJobState) -> tuple[str, ...]:
    """The job states allowed to move to `target`, for a SQL `state IN (...)`."""
    return tuple(sorted(s.value for s, moves in BATCH_JOB_MOVES.items() if target in moves))


class EnqueueVerdict(enum.StrEnum):
    """What `Manifest.batch_enqueue` decided for a chunk."""

    ALREADY = "already"  # its line is in a job still open
    SHARED = "shared"  # the same content's line is in an open job for another path: one request
    QUEUED = "queued"  # write its line into the part
