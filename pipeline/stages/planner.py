"""Plan a run over a tree: what is new, changed, unchanged, failed; and what it would cost."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import CommandLine, RunSettings, Settings
from pipeline.cpus import usable_cores
from pipeline.errors import PipelineError
from pipeline.logsetup import get_logger
from pipeline.manifest import DocumentRow
from pipeline.manifest.states import DocState
from pipeline.pricing import cost
from pipeline.stages.discover import Skipped, discover
from pipeline.stages.plan import TODO, Decision, PlanItem, decide, wants_retry
from pipeline.stages.split import pdf_page_count

# The local engine's measured speed on scanned pages, per process (one per core): 138 pages/min
# with 2 processes (benchmarks/bench_local.py, docs/local-engine.md). Pages read from a text layer
# take about a millisecond, so an estimate at this speed is an upper bound.
LOCAL_OCR_PAGES_PER_MIN_PER_CORE = 69.0


@dataclass(frozen=True)
class Touch:
    """An unchanged file whose mtime moved (same hash): remember its new stat."""

    rel: str
    size: int
    mtime_ns: int


PlanEvent = PlanItem | Skipped | Touch


@dataclass
class PlanTally:
    """What planning has found so far: filled in as the walk goes (the plan is streamed)."""

    counts: dict[str, int] = field(default_factory=dict)
    ignored: list[Skipped] = field(default_factory=list)
    failed_earlier: int = 0
    todo: int = 0
    bad: int = 0

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def plan_events(
    run: RunSettings,
    command: CommandLine,
    input_dir: Path,
    output_dir: Path,
    lookup: Callable[[str], DocumentRow | None],
    tally: PlanTally,
) -> Iterator[PlanEvent]:
    """Walk the input and decide, file by file, what this run does (see plan.decide).

    A generator, and manifest rows are looked up one path at a time: memory does not grow with
    the number of documents. Yields the documents to process (PlanItem), the files that fail
    before any work (Skipped) and the stats to refresh (Touch); counts go into `tally`.
    """
    skip_dirs = [output_dir] if output_dir.is_relative_to(input_dir) else []
    retry_categories = set(command.retry_categories) if command.retry_categories else None
    rows = _RowCache(lookup, force=command.force)
    for found in discover(input_dir, include=run.include, exclude=run.exclude,
                          follow_symlinks=run.follow_symlinks, skip_dirs=skip_dirs,
                          known=rows.known):
        if isinstance(found, Skipped):
            yield from _refused_event(found, rows.row_for(found.rel), tally, retry=wants_retry(
                rows.row_for(found.rel), retry_failed=command.retry_failed,
                retry_categories=retry_categories))
            continue
        try:
            item = decide(found, rows.row_for(found.rel), force=command.force,
                          retry_failed=command.retry_failed, retry_categories=retry_categories)
        except OSError as exc:  # re-hashing a changed file failed: that file alone fails
            tally.bad += 1
            tally.count("bad_input")
            yield Skipped(found.rel, f"cannot read it to check for changes: {exc.strerror or exc}",
                          size=found.size, mtime_ns=found.mtime_ns)
            continue
        tally.count(item.decision.value)
        if item.decision in TODO:
            tally.todo += 1
            yield item
        elif item.decision == Decision.FAILED_EARLIER:
            tally.failed_earlier += 1
        elif item.decision == Decision.UNCHANGED and item.sha256 is not None:
            yield Touch(found.rel, found.size, found.mtime_ns)
    # Said here, when the walk ends, not when the last planned document is taken for work.
    get_logger().info("plan", todo=tally.todo, **dict(tally.counts))


class _RowCache:
    """The manifest row of the file being planned, looked up once (the walk asks twice)."""

    def __init__(self, lookup: Callable[[str], DocumentRow | None], *, force: bool) -> None:
        self.lookup = lookup
        self.force = force
        self.rel: str | None = None
        self.row: DocumentRow | None = None

    def row_for(self, rel: str) -> DocumentRow | None:
        if rel != self.rel:
            self.rel, self.row = rel, self.lookup(rel)
        return self.row

    def known(self, rel: str, size: int, mtime_ns: int) -> str | None:
        """The media type of a file done before with this size and mtime: it is not opened."""
        row = self.row_for(rel)
        if (row is None or self.force or row.state != DocState.DONE or row.size != size
                or row.mtime_ns != mtime_ns):
            return None
        return row.media_type


def _refused_event(found: Skipped, row: DocumentRow | None, tally: PlanTally, *,
                   retry: bool) -> Iterator[Skipped]:
    """A file refused before any work: an ignored entry, a failure left alone from an earlier
    run (same size and mtime, not retried), or a failure of this run."""
    if not found.failure:
        tally.ignored.append(found)
        return
    if (row and row.state == DocState.FAILED and row.size == found.size
            and row.mtime_ns == found.mtime_ns and not retry):
        tally.failed_earlier += 1
        tally.count(Decision.FAILED_EARLIER.value)
        return
    tally.bad += 1
    tally.count("bad_input")
    yield found


def take(events: Iterator[PlanEvent], n: int) -> list[PlanEvent]:
    """Up to `n` events (fewer at the end): one trip to a thread for a batch of files."""
    return list(itertools.islice(events, n))


def tiff_frame_count(path: Path) -> int:
    """Frames of a TIFF (each is a page of its own); only the frame directories are read."""
    from pipeline.stages.tiff import count_frames

    return count_frames(path)


def _pages(s: Settings, item: PlanItem) -> int:
    src = item.source
    if src.media_type == "application/pdf":
        return pdf_page_count(src.path.read_bytes(), src.rel, s.run.pdf_passwords)
    if src.media_type == "image/tiff":
        return tiff_frame_count(src.path)
    return 1


def local_processes(s: Settings) -> int:
    return s.local.processes or usable_cores()


def estimate(s: Settings, todo: Iterable[PlanItem], price: float) -> dict[str, Any]:
    """Pages, requests, cost and time of the planned work: what --dry-run prints.

    Time: for a hosted backend, requests at the configured rate; for the local engine, pages at
    its measured speed per process (scanned pages; text-layer pages are far faster)."""
    pages = requests = 0
    unreadable = 0
    documents = 0
    for item in todo:
        documents += 1
        try:
            n = _pages(s, item)
        except (PipelineError, OSError, ValueError, EOFError, SyntaxError):
            unreadable += 1
            continue
        pages += n
        requests += -(-n // s.limits.max_pages_per_request)
    rate = s.limits.rps or 0.0  # None: auto (learned from the service), unknown beforehand
    result: dict[str, Any] = {
        "documents": documents,
        "pages": pages,
        "requests": requests,
        "cost": cost(pages, price),
        "price_per_1000_pages": price,
        "rps": rate,
        "seconds": requests / rate if rate else 0.0,
        "unreadable": unreadable,
    }
    if s.service.backend == "local":
        processes = local_processes(s)
        per_min = LOCAL_OCR_PAGES_PER_MIN_PER_CORE * processes
        result.update(seconds=pages / per_min * 60, pages_per_min=per_min, processes=processes)
    return result
