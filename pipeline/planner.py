"""Plan a run over a tree: what is new, changed, unchanged, failed; and what it would cost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.discover import Skipped, discover
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.plan import TODO, Decision, PlanItem, decide
from pipeline.pricing import cost
from pipeline.split import pdf_page_count


@dataclass
class PlanResult:
    todo: list[PlanItem]
    counts: dict[str, int]
    skipped_failures: list[Skipped]
    ignored: list[Skipped]
    failed_earlier: int


def plan_tree(s: Settings, input_dir: Path, output_dir: Path, manifest: Manifest) -> PlanResult:
    """Walk the input and decide, file by file, what this run does (see plan.decide)."""
    rows = manifest.all_documents()
    skip_dirs = [output_dir] if output_dir.is_relative_to(input_dir) else []
    todo: list[PlanItem] = []
    counts: dict[str, int] = {}
    skipped_failures: list[Skipped] = []
    ignored: list[Skipped] = []
    failed_earlier = 0
    retry_categories = set(s.retry_categories) if s.retry_categories else None

    def known(rel: str, size: int, mtime_ns: int) -> str | None:
        row = rows.get(rel)
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
                ignored.append(found)
                continue
            row = rows.get(found.rel)
            retry = s.retry_failed and (
                not retry_categories or (row and row.error_category in retry_categories)
            )
            if (row and row.state == "failed" and row.size == found.size
                    and row.mtime_ns == found.mtime_ns and not retry):
                failed_earlier += 1
                counts[Decision.FAILED_BEFORE] = counts.get(Decision.FAILED_BEFORE, 0) + 1
                continue
            skipped_failures.append(found)
            counts["bad_input"] = counts.get("bad_input", 0) + 1
            continue
        try:
            item = decide(
                found,
                rows.get(found.rel),
                force=s.force,
                retry_failed=s.retry_failed,
                retry_categories=retry_categories,
            )
        except OSError as exc:  # re-hashing a changed file failed: that file alone fails
            skipped_failures.append(Skipped(
                found.rel, f"cannot read it to check for changes: {exc.strerror or exc}",
                size=found.size, mtime_ns=found.mtime_ns,
            ))
            counts["bad_input"] = counts.get("bad_input", 0) + 1
            continue
        counts[item.decision.value] = counts.get(item.decision.value, 0) + 1
        if item.decision in TODO:
            todo.append(item)
        elif item.decision == Decision.FAILED_BEFORE:
            failed_earlier += 1
        elif item.decision == Decision.UNCHANGED and item.sha256 is not None:
            manifest.touch_unchanged(found.rel, found.size, found.mtime_ns)
    return PlanResult(todo, counts, skipped_failures, ignored, failed_earlier)


def estimate(s: Settings, todo: list[PlanItem], price: float) -> dict[str, Any]:
    """Pages, requests, cost and time of the planned work: what --dry-run prints."""
    pages = requests = 0
    unreadable = 0
    for item in todo:
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
        "documents": len(todo),
        "pages": pages,
        "requests": requests,
        "cost": cost(pages, price),
        "price_per_1000_pages": price,
        "rps": rate,
        "seconds": seconds,
        "unreadable": unreadable,
    }
