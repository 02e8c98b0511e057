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
