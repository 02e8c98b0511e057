"""A batch of the plan is written to the manifest in one transaction (run/runner.py,
`_plan_batch`): the files a run skips or finds unchanged with a new mtime (an archive copied
again) must not cost one transaction, one disk sync, each. Real SQLite, traced."""

from __future__ import annotations

from pathlib import Path

from pipeline.manifest import Manifest
from pipeline.manifest.rows import PlannedDocument
from pipeline.manifest.writer import AsyncManifest
from pipeline.models import SourceFile
from pipeline.run.runner import Run
from pipeline.stages.discover import Skipped
from pipeline.stages.plan import Decision, PlanItem
from pipeline.stages.planner import PlanEvent, PlanTally, Touch
from tests.conftest import make_settings

TOUCHED = 40
BROKEN = 10
NEW = 5


def events() -> list[PlanEvent]:
    touched: list[PlanEvent] = [Touch(f"old/{n:03d}.pdf", 2000 + n, 7_000_000 + n)
                                for n in range(TOUCHED)]
    broken: list[PlanEvent] = [Skipped(f"bad/{n:03d}.pdf", "not a PDF (damaged header)",
                                       size=10, mtime_ns=5) for n in range(BROKEN)]
    new: list[PlanEvent] = [
        PlanItem(SourceFile(Path("/in") / f"new/{n}.pdf", f"new/{n}.pdf", 100, 1,
                            "application/pdf"), Decision.NEW)
        for n in range(NEW)]
    mixed: list[PlanEvent] = []
    for index in range(TOUCHED):  # interleaved, as a walk meets them
        mixed.append(touched[index])
        if index < BROKEN:
            mixed.append(broken[index])
        if index < NEW:
            mixed.append(new[index])
    return mixed


async def test_one_batch_of_the_plan_is_one_transaction(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    run = Run(make_settings(tmp_path / "in", tmp_path / "out", "http://127.0.0.1:9"))
    manifest = Manifest(tmp_path / "manifest.sqlite")
    manifest.record_plan([PlannedDocument(f"old/{n:03d}.pdf", 1000, 1, "application/pdf")
                          for n in range(TOUCHED)], "earlier")
    begun: list[str] = []
    manifest._db.set_trace_callback(
        lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    db = AsyncManifest(manifest)
    db.start()
    try:
        planned = await run._plan_batch(iter(events()), PlanTally(), db)
    finally:
        await db.stop()
    manifest._db.set_trace_callback(None)

    assert planned is not None and [i.source.rel for i in planned] == [
        f"new/{n}.pdf" for n in range(NEW)]
    # 55 writes: one transaction when they all reach the writer's queue before it wakes, a
    # couple when it wakes early; one apiece (55) when each waits for the one before.
    assert 1 <= len(begun) <= 3, f"{len(begun)} transactions for one batch of the plan"
    # Every write was made.
    row = manifest.lookup("old/007.pdf")
    assert row is not None and (row.size, row.mtime_ns) == (2007, 7_000_007)
    failed = manifest.lookup("bad/003.pdf")
    assert failed is not None and failed.state == "failed"
    assert manifest.lookup("new/4.pdf") is not None
    assert sorted(f.path for f in run.report.failures) == [f"bad/{n:03d}.pdf"
                                                          for n in range(BROKEN)]
    manifest.close()
