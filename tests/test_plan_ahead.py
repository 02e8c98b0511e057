"""The plan runs one batch ahead of the pool (run/runner.py, `planned_documents`): the next
batch of files is walked, sniffed and recorded while the pool opens the current one's, so a
slow trip to the planner's thread or to the manifest never leaves the pool with nothing to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.models import SourceFile
from pipeline.run.runner import PLAN_BATCH, Run
from pipeline.stages.plan import Decision, PlanItem
from pipeline.stages.planner import PlanEvent, PlanTally
from tests.conftest import make_settings


class RecordingManifest:
    """The manifest calls planning makes, recorded (the pool's side is not exercised here)."""

    def __init__(self) -> None:
        self.recorded: list[list[str]] = []

    async def record_plan_batch(self, documents: list[Any], run_id: str, *,
                                skipped: Any = (), restated: Any = ()) -> None:
        assert not skipped, "no file of this plan is skipped"
        assert not restated, "no file of this plan is unchanged"
        await asyncio.sleep(0)
        self.recorded.append([d.path for d in documents])


def walk(count: int, taken: list[str], *, broken_at: int | None = None) -> Iterator[PlanEvent]:
    """`count` new PDFs, each appended to `taken` as the planner's thread takes it."""
    for n in range(count):
        if n == broken_at:
            raise OSError("the input folder went away")
        rel = f"f/{n:05d}.pdf"
        taken.append(rel)
        yield PlanItem(SourceFile(Path("/in") / rel, rel, 1000, 0, "application/pdf"),
                       Decision.NEW)


def hanging_walk(hung: threading.Event) -> Iterator[PlanEvent]:
    """A first batch of files, then a read that hangs for a second (a dead network share) as
    the second batch's first file is taken; `hung` is set when the hang begins."""
    yield from walk(PLAN_BATCH, [])
    hung.set()
    time.sleep(1.0)
    yield from walk(1, [])


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait (up to 5 s) until `condition()` holds."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


async def settle(taken: list[str], expected: int) -> None:
    """Wait until `expected` files were taken, then a little longer, so that a planner running
    further ahead than it should would be caught."""
    await wait_until(lambda: len(taken) >= expected)
    await asyncio.sleep(0.1)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    (tmp_path / "in").mkdir()
    return Run(make_settings(tmp_path / "in", tmp_path / "out", "http://127.0.0.1:9"))


async def test_the_next_batch_is_planned_and_recorded_while_the_pool_opens_this_one(
    run: Run,
) -> None:
    taken: list[str] = []
    db = RecordingManifest()
    planned = run.planned_documents(walk(3 * PLAN_BATCH + 10, taken), PlanTally(), db)  # type: ignore[arg-type]
    first = await anext(planned)
    assert first.source.rel == "f/00000.pdf"
    await settle(taken, 2 * PLAN_BATCH)
    await wait_until(lambda: len(db.recorded) == 2)  # the second batch's record follows its walk
    # One batch ahead, and no more: the second batch is walked and recorded as pending while
    # the pool has taken one document of the first; the third waits for the pool.
    assert len(taken) == 2 * PLAN_BATCH
    assert [len(b) for b in db.recorded] == [PLAN_BATCH, PLAN_BATCH]
    rest = [item.source.rel async for item in planned]
    assert [first.source.rel, *rest] == taken  # every file once, in the walk's order
    assert len(taken) == 3 * PLAN_BATCH + 10
    assert sum(len(b) for b in db.recorded) == len(taken)


async def test_a_pool_that_stops_early_leaves_no_planner_behind(run: Run) -> None:
    taken: list[str] = []
    db = RecordingManifest()
    planned = run.planned_documents(walk(10 * PLAN_BATCH, taken), PlanTally(), db)  # type: ignore[arg-type]
    await anext(planned)
    await settle(taken, 2 * PLAN_BATCH)
    await planned.aclose()  # the pool stopped opening documents (a stop, a budget)
    assert len(taken) == 2 * PLAN_BATCH
    await asyncio.sleep(0.1)
    assert len(taken) == 2 * PLAN_BATCH  # nothing walks on after the close
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


async def test_an_error_of_the_walk_reaches_the_pool_after_the_batches_before_it(
    run: Run,
) -> None:
    taken: list[str] = []
    db = RecordingManifest()
    planned = run.planned_documents(  # type: ignore[arg-type]
        walk(3 * PLAN_BATCH, taken, broken_at=PLAN_BATCH + 5), PlanTally(), db)
    got: list[str] = []
    with pytest.raises(OSError, match="the input folder went away"):
        async for item in planned:
            got.append(item.source.rel)
    assert len(got) == PLAN_BATCH  # the whole first batch, then the error


async def test_a_walk_that_hangs_does_not_hold_the_close(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a dead network share) in the batch planned ahead: closing the
    plan gives up on it after PLAN_CLOSE_WAIT_S instead of waiting with it."""
    import pipeline.run.runner as runner_module

    monkeypatch.setattr(runner_module, "PLAN_CLOSE_WAIT_S", 0.2)
    hung = threading.Event()
    planned = run.planned_documents(hanging_walk(hung), PlanTally(), RecordingManifest())  # type: ignore[arg-type]
    await anext(planned)
    assert await asyncio.to_thread(hung.wait, 5)  # the planner is in the second batch's trip
    started = time.monotonic()
    await planned.aclose()
    assert time.monotonic() - started < 0.8
    await asyncio.sleep(0.05)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []


async def test_a_consumer_cancelled_twice_while_closing_leaves_no_planner(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second cancel lands in the close's wait for the batch in hand: the planner is still
    cancelled, not left to record a batch after the run has closed its manifest."""
    import pipeline.run.runner as runner_module

    monkeypatch.setattr(runner_module, "PLAN_CLOSE_WAIT_S", 5.0)
    hung = threading.Event()
    planned = run.planned_documents(hanging_walk(hung), PlanTally(), RecordingManifest())  # type: ignore[arg-type]

    async def consume() -> None:
        async with contextlib.aclosing(planned):
            async for _ in planned:
                await asyncio.sleep(3600)  # a pool with a document open

    consumer = asyncio.create_task(consume())
    assert await asyncio.to_thread(hung.wait, 5)
    consumer.cancel()  # the close begins, and waits for the batch in hand
    await asyncio.sleep(0.05)
    consumer.cancel()  # the second cancel lands in that wait
    await asyncio.wait([consumer], timeout=2)
    assert consumer.done()
    await asyncio.sleep(0.05)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
