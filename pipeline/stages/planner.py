"""Plan a run over a tree: what is new, changed, unchanged, failed; and what it would cost."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.manifest import DocumentRow
from pipeline.pricing import cost
from pipeline.stages.discover import Skipped, discover
from pipeline.stages.plan import TODO, Decision, PlanItem, decide
from pipeline.stages.split import pdf_page_count


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
    finished: bool = False

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def plan_events(
    s: Settings,
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
    retry_categories = set(s.retry_categories) if s.retry_categories else None
    last: dict[str, DocumentRow | None] = {}  # the row looked up for the current file

    def row_for(rel: str) -> DocumentRow | None:
        if rel not in last:
            last.clear()
            last[rel] = lookup(rel)
        return last[rel]

    def known(rel: str, size: int, mtime_ns: int) -> str | None:
        row = row_for(rel)
        if (row is None or s.force or row.state != "done" or row.size != size
                or row.mtime_ns != mtime_ns):
            return None
        return row.media_type

    for found in discover(
        input_dir,
        include=s.include,
        exclude=s.exclude,
        follow_symlinks=s.follow_symlinks,
        skip_dirs=skip_dirs,
        known=known,
    ):
        if isinstance(found, Skipped):
            if not found.failure:
                tally.ignored.append(found)
                continue
            row = row_for(found.rel)
            retry = s.retry_failed and (
                not retry_categories or (row and row.error_category in retry_categories)
            )
            if (row and row.state == "failed" and row.size == found.size
                    and row.mtime_ns == found.mtime_ns and not retry):
                tally.failed_earlier += 1
                tally.count(Decision.FAILED_BEFORE.value)
                continue
            tally.bad += 1
            tally.count("bad_input")
            yield found
            continue
        try:
            item = decide(
                found,
                row_for(found.rel),
                force=s.force,
                retry_failed=s.retry_failed,
                retry_categories=retry_categories,
            )
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
        elif item.decision == Decision.FAILED_BEFORE:
            tally.failed_earlier += 1
        elif item.decision == Decision.UNCHANGED and item.sha256 is not None:
            yield Touch(found.rel, found.size, found.mtime_ns)
    tally.finished = True


def take(events: Iterator[PlanEvent], n: int) -> list[PlanEvent]:
    """Up to `n` events (fewer at the end): one trip to a thread for a batch of files."""
    return list(itertools.islice(events, n))


def estimate(s: Settings, todo: Iterable[PlanItem], price: float) -> dict[str, Any]:
    """Pages, requests, cost and time of the planned work: what --dry-run prints."""
    pages = requests = 0
    unreadable = 0
    documents = 0
    for item in todo:
        documents += 1
        src = item.source
        if src.media_type == "application/pdf":
            try:
                n = pdf_page_count(src.path.read_bytes(), src.rel, s.pdf_passwords)
            except (PipelineError, OSError):
                unreadable += 1
                continue
        else:
            n = 1
        pages += n
        requests += -(-n // s.max_pages_per_request)
    rate = s.rps if s.rps > 0 else 0.0
    seconds = requests / rate if rate else 0.0
    return {
        "documents": documents,
        "pages": pages,
        "requests": requests,
        "cost": cost(pages, price),
        "price_per_1000_pages": price,
        "rps": rate,
        "seconds": seconds,
        "unreadable": unreadable,
    }
