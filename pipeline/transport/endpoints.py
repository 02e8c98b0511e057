"""Several deployments of the same model (`endpoints:`), one rate limiter each: each chunk goes to
whichever endpoint has room for it now.

Each endpoint is a `Lane`: its backend, its limiter (learning that endpoint's limit), its health
and its figures. A chunk is sent to the live lane with the most unused capacity (the limiter's
`demand()`), or the shortest queue. A chunk whose try failed on a lane tries another lane next
(a dead endpoint does not spend all of a chunk's tries). A lane that keeps failing has its
breaker opened for a while; when that while is over one chunk probes it (half-open) and the
others keep away until the probe succeeds. A lane whose key is refused, or that has failed past
its deadline, is drained for the rest of the run. The run is fatal only when no lane is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.backends.base import Backend, OCRResponse
from pipeline.errors import FatalError, RetryableError, StopRequested
from pipeline.logsetup import get_logger
from pipeline.models import Chunk
from pipeline.transport.ratelimit import RateLimiter
from pipeline.transport.retry import EndpointHealth, RetryPolicy, RetryStats, call_with_retry

BREAKER_FAILURES = 3  # consecutive failures (not 429s) that open a lane's breaker
BREAKER_SECONDS = 30.0  # how long an open breaker keeps chunks away from its lane


@dataclass
class Lane:
    name: str
    backend: Backend
    limiter: RateLimiter
    health: EndpointHealth
    stats: RetryStats = field(default_factory=RetryStats)
    pages: int = 0
    failures: int = 0  # chunks' tries that failed here (not 429s)
    consecutive_failures: int = 0
    open_until: float = 0.0
    half_open: bool = False  # the breaker has opened: after open_until, one probe at a time
    probing: bool = False  # that probe is under way
    drained: str | None = None  # why the lane takes no more work
    on_pause: set[Callable[[], None]] = field(default_factory=set, repr=False)

    def signal_pause(self) -> None:
        """The lane has just paused or drained: tell the chunks waiting for it."""
        for callback in list(self.on_pause):
            callback()

    def ready(self, now: float) -> bool:
        """May a chunk be sent here now? Not while the breaker is open or its probe is out."""
        return now >= self.open_until and not (self.half_open and self.probing)

    def state(self, now: float) -> str:
        if self.drained:
            return "drained"
        return "open" if now < self.open_until else "ok"

    def figures(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state(now),
            "reason": self.drained,
            "requests": self.stats.attempts,
            "pages": self.pages,
            "throttled": self.stats.throttled,
            "failures": self.failures,
            "rate": round(self.limiter.rate, 2),
        }


class _Sending:
    """A lane's backend as `call_with_retry` sees it: notes whether the chunk was sent (the
    limiter admitted it) before handing it to the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name, self.model = backend.name, backend.model
        self.sent = False

    @property
    def bytes_sent(self) -> int:
        return self.backend.bytes_sent

    async def ocr(self, chunk: Chunk) -> OCRResponse:
        self.sent = True
        return await self.backend.ocr(chunk)

    async def close(self) -> None:
        """The lane owns the backend: nothing to close here."""


class MultiEndpointTransport:
    """A `ChunkTransport` over several lanes."""

    def __init__(self, lanes: list[Lane], policy: RetryPolicy, *,
                 clock: Callable[[], float] = time.monotonic, log: Any = None) -> None:
        if not lanes:
            raise ValueError("at least one endpoint")
        self.lanes = lanes
        self.policy = policy
        self._one_try = RetryPolicy(1, policy.initial, policy.maximum, policy.rng)
        self._clock = clock
        self._stopped = False
        self.log = log or get_logger()  # an endpoint paused or drained is said here

    # ---- what the run reads ----------------------------------------------------------------
    @property
    def stats(self) -> RetryStats:
        """Every lane's request figures added up."""
        total = RetryStats()
        for lane in self.lanes:
            total.attempts += lane.stats.attempts
            total.retries += lane.stats.retries
            total.throttled += lane.stats.throttled
            for status, n in lane.stats.by_status.items():
                total.by_status[status] = total.by_status.get(status, 0) + n
        return total

    @property
    def bytes_sent(self) -> int:
        return sum(lane.backend.bytes_sent for lane in self.lanes)

    @property
    def in_flight(self) -> int:
        return sum(lane.limiter.in_flight for lane in self.lanes)

    def demand(self) -> int:
        now = self._clock()
        return sum(lane.limiter.demand() for lane in self.lanes if lane.state(now) == "ok")

    def endpoint_figures(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        return {lane.name: lane.figures(now) for lane in self.lanes}

    def stop(self) -> None:
        self._stopped = True
        for lane in self.lanes:
            lane.limiter.close()

    async def close(self) -> None:
        await asyncio.gather(*(lane.backend.close() for lane in self.lanes))

    # ---- answering a chunk -----------------------------------------------------------------
    def pick(self, avoid: Lane | None = None) -> Lane:
        """The live lane with the most room, other than `avoid` (where the chunk just failed) when
        another is ready; if none is ready, the one whose breaker closes first."""
        now = self._clock()
        live = [lane for lane in self.lanes if lane.drained is None]
        if not live:
            reasons = "; ".join(f"{lane.name}: {lane.drained}" for lane in self.lanes)
            raise FatalError(f"every endpoint is drained ({reasons})",
                             hint="check the endpoints' keys and status; the run is resumable")
        ready = [lane for lane in live if lane.ready(now)]
        if not ready:
            return min(live, key=lambda lane: lane.open_until)
        others = [lane for lane in ready if lane is not avoid]
        return max(others or ready, key=lambda lane: (
            lane.limiter.demand(), -lane.limiter.waiting / max(lane.limiter.rate, 0.1)))

    async def answer(self, chunk: Chunk) -> OCRResponse:
        failures = 0
        failed_on: Lane | None = None
        while True:
            lane = self.pick(failed_on)
            probe = lane.half_open and not lane.probing and self._clock() >= lane.open_until
            if probe:
                lane.probing = True  # this chunk probes the lane; the others keep away meanwhile
            try:
                response = await self._try(lane, chunk)
            except StopRequested:
                if lane.drained and not self._stopped:
                    continue  # its lane was drained while the chunk waited: take another
                raise
            except FatalError as exc:
                if any(other.drained is None and other is not lane for other in self.lanes):
                    self._drain(lane, str(exc))
                    continue
                raise
            except RetryableError:
                failures += 1
                failed_on = lane
                self._failed(lane, probe)
                if failures >= self.policy.attempts:
                    raise
                await asyncio.sleep(self.policy.backoff(failures) if self._alone() else 0)
                continue
            finally:
                if probe:
                    lane.probing = False  # the probe is over, whatever its outcome
            if response is None:
                continue  # the lane paused before the chunk was sent: take another
            lane.half_open = False  # an answer: the lane is healthy again
            lane.consecutive_failures = 0
            lane.pages += chunk.page_count
            return response

    async def _try(self, lane: Lane, chunk: Chunk) -> OCRResponse | None:
        """One try on `lane`; None when the lane paused while the chunk still waited in its
        limiter's queue (not sent, so not a failure: the chunk moves on at once instead of
        being released to a failing endpoint at that endpoint's pace)."""
        sending = _Sending(lane.backend)
        task = asyncio.current_task()
        assert task is not None
        moved = False

        def move() -> None:
            nonlocal moved
            if not sending.sent and not moved:
                moved = True
                task.cancel()  # the limiter gives a cancelled waiter's place back

        lane.on_pause.add(move)
        try:
            return await call_with_retry(sending, chunk, lane.limiter, self._one_try,
                                         lane.health, lane.stats)
        except asyncio.CancelledError:
            if moved and task.uncancel() == 0:
                return None  # our own cancel, and nobody else's: move on
            raise
        finally:
            lane.on_pause.discard(move)

    def _alone(self) -> bool:
        """No other lane to try now: back off before trying the same one again."""
        now = self._clock()
        return sum(1 for lane in self.lanes if lane.state(now) == "ok") <= 1

    def _failed(self, lane: Lane, probe: bool = False) -> None:
        lane.failures += 1
        lane.consecutive_failures += 1
        if lane.consecutive_failures >= BREAKER_FAILURES or probe:
            lane.open_until = self._clock() + BREAKER_SECONDS
            lane.half_open = True
            lane.consecutive_failures = 0
            lane.signal_pause()
            self.log.warning("endpoint paused", endpoint=lane.name, seconds=BREAKER_SECONDS)

    def _drain(self, lane: Lane, why: str) -> None:
        if lane.drained is None:
            lane.drained = why
            lane.limiter.close()
            lane.signal_pause()
            self.log.error("endpoint drained", endpoint=lane.name, error=why)
