"""The collector's pacing (pipeline/gc_pacing.py): what is alive at a tick is out of the
full collections' walks until the next full pass (a minute later, or sooner when the process
has grown), which frees the cyclic garbage of the while; a run paces the collector while it
works and leaves it as it found it, even when something else in the run fails."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from pipeline import gc_pacing
from pipeline.gc_pacing import EARLY_PASS_BYTES, CollectorPacing
from pipeline.run.ticker import RunTicker
from tests.conftest import run_pipeline
from tests.pdfgen import write_pdf


class Node:
    """A reference cycle's member: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def pacing_running(pacing: CollectorPacing):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(pacing.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cyclic_garbage_frozen_by_a_tick_waits_for_the_next_full_pass() -> None:
    clock = Clock()
    pacing = CollectorPacing(freeze_every=0.01, full_every=60, clock=clock)
    async with pacing_running(pacing):
        node = Node()
        alive = weakref.ref(node)
        await asyncio.sleep(0.05)  # a few ticks: the cycle is frozen
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None, "frozen: no collection walks it (the point: short walks)"
        assert pacing.full_passes == 0
        clock.now = 60.0  # a minute later
        await asyncio.sleep(0.05)
        assert pacing.full_passes == 1
        assert alive() is None, "the full pass freed the cyclic garbage frozen before it"
    assert gc.get_freeze_count() == 0, "unfrozen when the pacing ends"


async def test_a_process_that_grew_gets_its_full_pass_before_the_minute() -> None:
    size = [100 << 20]
    pacing = CollectorPacing(freeze_every=0.01, clock=Clock(), resident=lambda: size[0])
    async with pacing_running(pacing):
        await asyncio.sleep(0.05)
        assert pacing.full_passes == 0
        size[0] += EARLY_PASS_BYTES  # frozen garbage holding document bytes, say
        await asyncio.sleep(0.05)
        assert pacing.full_passes == 1
        await asyncio.sleep(0.05)
        assert pacing.full_passes == 1, "measured again from the pass, not from the start"


@pytest.mark.parametrize("state", ["disabled", "frozen"])
async def test_a_collector_managed_elsewhere_is_left_alone(state: str) -> None:
    """An application embedding the pipeline that turned the collector off, or froze its own
    start-up objects, keeps it that way."""
    keep = Node()
    gc.freeze() if state == "frozen" else gc.disable()
    try:
        pacing = CollectorPacing(freeze_every=0.01, full_every=0.0, clock=Clock())
        await asyncio.wait_for(pacing.run(), 1)  # returns at once
        assert pacing.full_passes == 0
        if state == "frozen":
            assert gc.get_freeze_count() > 0, "its frozen objects stay frozen"
        else:
            assert not gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
    del keep


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


async def test_a_failed_ticker_does_not_leave_the_collector_frozen(
        tmp_path: Path, fake_server, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: RunTicker, db: object) -> None:
        raise RuntimeError("metrics file unwritable")

    monkeypatch.setattr(gc_pacing, "FREEZE_EVERY", 0.01)
    monkeypatch.setattr(RunTicker, "tick_forever", broken)
    server = await fake_server(latency=0.1)
    for n in range(3):
        write_pdf(tmp_path / "in" / f"doc{n}.pdf", f"doc{n}", 1)
    with contextlib.suppress(Exception):
        await run_pipeline(tmp_path / "in", tmp_path / "out", server.url, workers=1)
    await asyncio.sleep(0.05)  # a pacing left running would have frozen again by now
    assert gc.get_freeze_count() == 0


async def test_the_fake_server_paces_its_own_collector_and_unfreezes_on_sigterm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake server is the benchmarks' measuring instrument: a stall of its own stamps what
    arrived meanwhile at once (a burst no client sent). It freezes like a run does, and a real
    SIGTERM stops it with the collector handed back."""
    import os
    import signal

    from pipeline.fakeserver import cli
    from pipeline.fakeserver.options import FakeServerOptions

    monkeypatch.setattr(gc_pacing, "FREEZE_EVERY", 0.05)
    made: list[CollectorPacing] = []

    class Recorded(CollectorPacing):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(gc_pacing, "CollectorPacing", Recorded)
    assert gc.get_freeze_count() == 0
    server = asyncio.create_task(cli._serve(FakeServerOptions(), "127.0.0.1", 0))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if gc.get_freeze_count():
            break
    frozen = gc.get_freeze_count()
    assert frozen > 0 and not server.done()  # else no handler of its own takes the SIGTERM
    # Its full pass is not the pipeline's every minute, which it met at the same second.
    assert [p.full_every for p in made] == [cli.SERVER_FULL_EVERY] and cli.SERVER_FULL_EVERY >= 600
    os.kill(os.getpid(), signal.SIGTERM)  # the server's own handler stops it
    await asyncio.wait_for(server, 10)
    assert frozen > 0
    assert gc.get_freeze_count() == 0
