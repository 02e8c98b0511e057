"""`run --dry-run`: plan the input and estimate pages, requests, cost and time, calling nothing
and writing nothing (the manifest, when there is one, is only read)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.manifest import Manifest, manifest_path
from pipeline.run.report import Failure
from pipeline.stages.discover import Skipped
from pipeline.stages.plan import PlanItem
from pipeline.stages.planner import PlanTally, estimate, plan_events


def dry_run_estimate(s: Settings, input_dir: Path, output: Path, price: float, tally: PlanTally,
                     refused: Callable[[Failure], None]) -> dict[str, Any]:
    """The estimate of what a run would do; files refused before any work go to `refused`.
    Blocking (it walks the tree): call it in a thread."""
    path = manifest_path(output)
    reader = Manifest.reader(path) if path.exists() else None
    try:
        lookup = reader.lookup if reader else (lambda rel: None)
        events = plan_events(s.run, s.command, input_dir, output, lookup, tally)

        def todo() -> Iterator[PlanItem]:
            for event in events:
                if isinstance(event, PlanItem):
                    yield event
                elif isinstance(event, Skipped):
                    refused(Failure(event.rel, event.category, f"{event.rel}: {event.reason}"))

        return estimate(s, todo(), price)
    finally:
        if reader:
            reader.close()
