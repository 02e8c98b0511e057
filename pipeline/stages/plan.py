"""Decide what a run does with each discovered file: new, changed, unchanged, failed, retry.

Fast path: same size and mtime as the manifest's done row means unchanged, with no read of the
file. When they differ, the content hash decides, so a `touch` does not cost a re-OCR.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.manifest import DocumentRow
from pipeline.manifest.states import UNFINISHED, DocState
from pipeline.models import SourceFile


class Decision(enum.StrEnum):
    NEW = "new"
    CHANGED = "changed"
    RESUME = "resume"  # pending or running in the manifest: an earlier run did not finish it
    RETRY = "retry"  # failed before, retried on request
    UNCHANGED = "unchanged"
    FAILED_EARLIER = "failed_earlier"  # failed in an earlier run, left alone (--retry-failed)


TODO = {Decision.NEW, Decision.CHANGED, Decision.RESUME, Decision.RETRY}


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def wants_retry(row: DocumentRow | None, *, retry_failed: bool,
                retry_categories: set[str] | None) -> bool:
    """Is this failed document to be tried again? (--retry-failed, optionally only for some
    categories: --only-failed-category)."""
    return retry_failed and (
        not retry_categories or (row is not None and (row.error_category or "") in retry_categories)
    )


@dataclass(frozen=True)
class PlanItem:
    source: SourceFile
    decision: Decision
    sha256: str | None = None  # known when the plan had to hash the file


def decide(
    source: SourceFile,
    row: DocumentRow | None,
    *,
    force: bool = False,
    retry_failed: bool = False,
    retry_categories: set[str] | None = None,
) -> PlanItem:
    if row is None:
        return PlanItem(source, Decision.NEW)
    if force:
        return PlanItem(source, Decision.CHANGED)
    same_stat = row.size == source.size and row.mtime_ns == source.mtime_ns
    if row.state in UNFINISHED:
        return PlanItem(source, Decision.RESUME)
    if row.state == DocState.FAILED:
        if not same_stat:
            return PlanItem(source, Decision.CHANGED)
        wanted = wants_retry(row, retry_failed=retry_failed, retry_categories=retry_categories)
        return PlanItem(source, Decision.RETRY if wanted else Decision.FAILED_EARLIER)
    if same_stat:
        return PlanItem(source, Decision.UNCHANGED)
    sha = file_sha256(source.path)
    if sha == row.sha256:
        return PlanItem(source, Decision.UNCHANGED, sha)
    return PlanItem(source, Decision.CHANGED, sha)
