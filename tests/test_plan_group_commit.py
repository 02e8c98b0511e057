"""A batch of the plan is written to the manifest in one transaction (run/runner.py,
`_plan_batch`; `Manifest.record_plan_batch`): the files a run skips or finds unchanged with a
new mtime (an archive copied again) must not cost one transaction, one disk sync, each. Real
SQLite, its statements traced."""

from __future__ import annotations

from pathlib import Path

from pipeline.manifest import Manifest
from pipeline.manifest.rows import NewStat, PlannedDocument
from pipeline.manifest.states import DocState
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
    """Touched, broken and new files, interleaved as a walk meets them."""
    mixed: list[PlanEvent] = []
    for n in range(TOUCHED):
        mixed.append(Touch(f"old/{n:03d}.pdf", 2000 + n, 7_000_000 + n))
        if n < BROKEN:
            mixed.append(Skipped(f"bad/{n:03d}.pdf", "not a PDF (damaged header)", size=10,
                                 mtime_ns=5))
        if n < NEW:
            mixed.append(PlanItem(SourceFile(Path("/in") / f"new/{n}.pdf", f"new/{n}.pdf", 100, 1,
                                             "application/pdf"), Decision.NEW))
    return mixed


def traced(manifest: Manifest) -> list[str]:
    """The transactions `manifest` begins from now on (SQLite's own trace)."""
    begun: list[str] = []
    manifest._db.set_trace_callback(
        lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    return begun


def old_documents(manifest: Manifest) -> None:
    manifest.record_plan([PlannedDocument(f"old/{n:03d}.pdf", 1000, 1, "application/pdf")
                          for n in range(TOUCHED)], "earlier")


async def test_one_batch_of_the_plan_is_one_transaction(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    run = Run(make_settings(tmp_path / "in", tmp_path / "out", "http://127.0.0.1:9"))
    manifest = Manifest(tmp_path / "manifest.sqlite")
    old_documents(manifest)
    begun = traced(manifest)
    db = AsyncManifest(manifest)
    db.start()
    try:
        planned = await run._plan_batch(iter(events()), PlanTally(), db)
    finally:
        await db.stop()
    manifest._db.set_trace_callback(None)

    assert planned is not None
    assert [i.source.rel for i in planned] == [f"new/{n}.pdf" for n in range(NEW)]
    # 51 writes (40 touched, 10 skipped, the plan): one transaction, where each file awaited
    # on its own was one transaction apiece (51).
    assert len(begun) == 1, f"{len(begun)} transactions for one batch of the plan"
    row = manifest.lookup("old/007.pdf")
    assert row is not None and (row.size, row.mtime_ns) == (2007, 7_000_007)
    failed = manifest.lookup("bad/003.pdf")
    assert failed is not None and failed.state == DocState.FAILED
    assert failed.error_message == "bad/003.pdf: not a PDF (damaged header)"
    new = manifest.lookup("new/4.pdf")
    assert new is not None and new.state == DocState.PENDING
    assert sorted(f.path for f in run.report.failures) == [f"bad/{n:03d}.pdf"
                                                          for n in range(BROKEN)]
    manifest.close()


def test_a_batch_inside_a_batch_joins_it(tmp_path: Path) -> None:
    """The writer thread runs every call inside `batch()`, so `record_plan_batch` nests one:
    the inner one must leave the outer one open for the calls after it."""
    manifest = Manifest(tmp_path / "manifest.sqlite")
    old_documents(manifest)
    begun = traced(manifest)
    with manifest.batch():
        manifest.record_plan_batch([], "r2", restated=[NewStat("old/001.pdf", 5, 6)])
        manifest.touch_unchanged("old/002.pdf", 7, 8)  # still in the outer transaction
    manifest._db.set_trace_callback(None)
    assert len(begun) == 1
    row = manifest.lookup("old/002.pdf")
    assert row is not None and (row.size, row.mtime_ns) == (7, 8)
    manifest.close()
