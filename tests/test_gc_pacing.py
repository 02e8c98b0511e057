"""The collector's pacing (pipeline/run/gc_pacing.py): what is alive at a tick is out of the
full collections' walks until the next full pass, which frees the cyclic garbage of the while;
a run paces the collector while it works and leaves it as it found it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from pathlib import Path

import pytest

from pipeline.run import gc_pacing
from pipeline.run.gc_pacing import CollectorPacing
from tests.conftest import run_pipeline
from tests.pdfgen import write_pdf


class Node:
    """A reference cycle's member: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def test_cyclic_garbage_frozen_by_a_tick_waits_for_the_next_full_pass() -> None:
    pacing = CollectorPacing(freeze_every=0.01, full_every=0.3)
    task = asyncio.create_task(pacing.run())
    try:
        node = Node()
        alive = weakref.ref(node)
        await asyncio.sleep(0.05)  # a few ticks: the cycle is frozen
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None, "frozen: no collection walks it (the point: short walks)"
        assert pacing.full_passes == 0
        await asyncio.sleep(0.4)  # the full pass
        assert pacing.full_passes >= 1
        assert alive() is None, "the full pass freed the cyclic garbage frozen before it"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert gc.get_freeze_count() == 0, "unfrozen when the pacing ends"


async def test_a_run_paces_the_collector_and_leaves_it_unfrozen(
        tmp_path: Path, fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    freezes: list[int] = []
    freeze = gc.freeze
    monkeypatch.setattr(gc_pacing, "FREEZE_EVERY", 0.01)
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(1), freeze())[1])
    server = await fake_server(latency=0.1)
    for n in range(4):
        write_pdf(tmp_path / "in" / f"doc{n}.pdf", f"doc{n}", 1)
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, workers=1)
    assert report.exit_code == 0, report.failures
    assert report.documents_done == 4
    assert len(freezes) >= 10, "a run of 0.4 s at least ticked every 10 ms"
    assert gc.get_freeze_count() == 0
