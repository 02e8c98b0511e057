"""The pool's sizing rule (run/pool.py): when one more document may be opened."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.run.pool import MAX_OPEN_BYTES, DocumentPool, PoolHooks


class DemandOnly:
    """A transport that wants `wanted` more requests ready (all the pool asks of it here)."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted

    def demand(self) -> int:
        return self.wanted


def hooks() -> PoolHooks:
    def ignore(*_: Any) -> None:
        return None

    return PoolHooks(stopping=lambda: False, on_result=ignore, on_interrupted=ignore,
                     on_fatal=ignore, on_plan_error=ignore)


async def open_documents(pool: DocumentPool, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        pool.tasks.add(loop.create_future())  # type: ignore[arg-type]


async def test_with_demand_a_document_opens_while_the_transport_wants_more_than_is_coming() -> None:
    transport = DemandOnly(3)
    pool = DocumentPool(transport, hooks(), workers=None)  # type: ignore[arg-type]
    assert pool.room_for(0)  # nothing open: always one
    await open_documents(pool, 5)
    pool.watch.getting_ready.update({"a", "b", "c"})  # opened, no request asked for yet
    assert not pool.room_for(0)  # the 3 wanted are on their way
    transport.wanted = 4
    assert pool.room_for(0)
    assert not pool.room_for(MAX_OPEN_BYTES)  # memory bound: the open documents' bytes


async def test_a_fixed_number_of_workers_or_the_clusters_threads_bound_the_pool() -> None:
    pool = DocumentPool(DemandOnly(0), hooks(), workers=2)  # type: ignore[arg-type]
    await open_documents(pool, 1)
    assert pool.room_for(0)  # demand plays no part
    await open_documents(pool, 1)
    assert not pool.room_for(0)

    threads = [1]
    cluster = DocumentPool(DemandOnly(0), hooks(), workers=2,  # type: ignore[arg-type]
                           cluster_processes=lambda: threads[0])
    await open_documents(cluster, 2)
    assert not cluster.room_for(0)  # twice the cluster's threads
    threads[0] = 3  # workers joined
    assert cluster.room_for(0)


async def test_the_bytes_of_open_documents_bound_a_run_and_are_freed_as_documents_end() -> None:
    """run() keeps the open documents' bytes as they open and end: with four documents of 60 %
    of the bound each, two are open at once (a second opens beside the first one, a third
    would pass the bound), and when those two end their bytes are freed, so the next two open
    together again."""
    from pathlib import Path

    from pipeline.models import SourceFile
    from pipeline.stages.plan import Decision, PlanItem

    size = int(MAX_OPEN_BYTES * 0.6)
    phase = [asyncio.Event(), asyncio.Event()]
    opened: list[str] = []

    class Pool(DocumentPool):
        async def _document(self, ctx: Any, item: PlanItem) -> None:
            opened.append(item.source.rel)
            await phase[0 if len(opened) <= 2 else 1].wait()

    async def plan() -> Any:
        for n in range(4):
            yield PlanItem(SourceFile(Path(f"/in/{n}.pdf"), f"{n}.pdf", size, 0,
                                      "application/pdf"), Decision.NEW)

    pool = Pool(DemandOnly(100), hooks(), workers=None)  # type: ignore[arg-type]
    running = asyncio.create_task(pool.run(plan(), ctx=None))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert opened == ["0.pdf", "1.pdf"]  # 1.2 x the bound with a third: it waits
    phase[0].set()
    await asyncio.sleep(0.1)
    assert opened == ["0.pdf", "1.pdf", "2.pdf", "3.pdf"]  # the first two's bytes were freed
    assert len(pool.tasks) == 2
    phase[1].set()
    assert await asyncio.wait_for(running, 5) is None
