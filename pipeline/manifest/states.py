"""The manifest's state machine: a document's states, a chunk's states, and the allowed moves.

```
             record_plan            claim              finish
  (none) ──────────────► PENDING ─────────► RUNNING ─────────► DONE
     │                     ▲  ▲               │ │                │
     │ fail (planning)     │  └── release ────┘ │ fail           │ record_plan
     ▼                     │   (stop, crash)    ▼                │ (changed file)
   FAILED ─────────────────┴──────────────── FAILED ◄────────────┘
           record_plan (--retry-failed, changed file)
```
A crash leaves rows RUNNING; the next run's `start_run` puts them back to PENDING.
Chunks: an answer is checkpointed as CHUNK_DONE the moment it arrives; when its document is
stored, its chunks become CHUNK_MERGED and their bodies are dropped.
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
