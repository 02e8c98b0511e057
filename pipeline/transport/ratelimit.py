"""One rate limiter shared by every worker: requests per second, a concurrency cap, and a pause.

Requests are spaced evenly at the current rate (no bursts that a server-side window would
reject). A 429 pauses every worker until its Retry-After has passed and lowers the rate; each
success raises it again slowly, never above the configured ceiling (additive increase,
multiplicative decrease), so the pipeline settles just under the server's real limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from pipeline.errors import StopRequested

MAX_PAUSE = 900.0  # a Retry-After beyond 15 minutes is treated as 15 minutes
# Added to the rate per successful answer: at any rate that is about +2% per second, so the
# probe above a server's limit costs roughly one 429 per 50-100 requests.
PROBE_STEP = 0.02
QUIET_SECONDS = 5.0  # with no 429 for this long, the rate grows 5x faster (about 10% a second)
QUIET_STEP = 0.1


class RateLimiter:
    def __init__(
        self,
        rps: float,
        max_in_flight: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        decrease: float = 0.7,
        min_rps: float = 0.2,
    ) -> None:
        self.configured = rps if rps > 0 else 0.0
        self.ceiling = self.configured  # 0: no limit known
        self.rate = self.ceiling  # current target; 0 means unlimited
        self.decrease = decrease
        self.min_rps = min_rps
        self._clock = clock
        self._sem = asyncio.Semaphore(max_in_flight)
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._recent: deque[float] = deque(maxlen=512)  # send times, to estimate the real rate
        self._decreased_at = -1e9
        self.learned = False  # the server announced its limit
        self._recover_to = 0.0  # after a blind back-off, climb fast up to this rate
        self._successes: deque[float] = deque(maxlen=2048)
        self.throttled = 0  # 429s seen
        self.in_flight = 0
        self.closed = False  # set when the run stops dispatching: no new request may start
        self._closed_event = asyncio.Event()
        self._answered = asyncio.Event()  # the first request has come back
        self._probe_sent = False

    def close(self) -> None:
        self.closed = True
        self._closed_event.set()  # wake everyone waiting out a pause or a slot

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed_event.wait(), seconds)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one request's place: waits for the concurrency cap, any pause, and the rate."""
        async with self._sem:
            await self._wait_turn()
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
                self._answered.set()  # whatever the outcome, the server has spoken

    async def _probe_first(self) -> None:
        """Slow start: with no configured rate, one request goes first and the rest wait for its
        answer, which may announce the server's limit (x-ratelimit-*); a blind burst of
        max_in_flight requests would meet a wall of 429s."""
        if self._answered.is_set() or self.ceiling > 0 or self.rate > 0:
            return
        if not self._probe_sent:
            self._probe_sent = True
            return
        await self._sleep_until_answered()

    async def _sleep_until_answered(self) -> None:
        waiter = asyncio.ensure_future(self._answered.wait())
        closer = asyncio.ensure_future(self._closed_event.wait())
        try:
            await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()

    async def _wait_turn(self) -> None:
        await self._probe_first()
        while True:
            if self.closed:
                raise StopRequested()
            now = self._clock()
            if self._paused_until > now:
                await self._sleep(self._paused_until - now)
                continue
            if self.rate <= 0:
                self._recent.append(now)
                return
            interval = 1.0 / self.rate
            # A request that reaches the limiter a little after its slot (the loop was busy)
            # may still take it, up to half an interval late: otherwise every late arrival
            # shifts the schedule and is rate lost for good.
            floor = now - 0.5 * interval if self._next_slot else now
            slot = max(floor, self._next_slot)
            self._next_slot = slot + interval
            if slot > now:
                await self._sleep(slot - now)
            if self._paused_until > self._clock() or self.closed:
                continue  # a 429 (or a stop) arrived while we waited
            self._recent.append(self._clock())
            return

    def observed_rate(self, window: float = 5.0) -> float:
        now = self._clock()
        recent = [t for t in self._recent if now - t <= window]
        if len(recent) < 2:
            return 0.0
        return len(recent) / max(now - recent[0], 1e-3)

    def admitted_rate(self, window: float = 5.0) -> float | None:
        """Answers per second the server let through lately: its real limit while it pushes
        back. None until there are enough answers to tell."""
        now = self._clock()
        recent = [t for t in self._successes if now - t <= window]
        if len(recent) < 8:
            return None
        return len(recent) / max(now - recent[0], 0.5)

    def throttle(self, retry_after: float | None) -> None:
        """A 429: pause everyone for `retry_after` seconds and lower the rate.

        With a limit the server announced, a 429 is timing jitter: step back 5%. Without one,
        the rate the server has been admitting is its limit: settle just under it. With too
        few answers to tell, back off multiplicatively and climb back fast to near where the
        trouble began.
        """
        self.throttled += 1
        now = self._clock()
        pause = 1.0 if retry_after is None else min(max(0.0, retry_after), MAX_PAUSE)
        self._paused_until = max(self._paused_until, now + pause)
        # After the pause, requests resume one interval apart, not all at once.
        self._next_slot = max(self._next_slot, self._paused_until)
        if now - self._decreased_at < 0.5:
            return  # the other 429s of one burst answer requests sent at the old rate
        self._decreased_at = now
        admitted = None if self.learned else self.admitted_rate()
        current = self.rate if self.rate > 0 else (self.observed_rate() or admitted or 0.0)
        if current <= 0:
            return
        if self.learned:
            new, self._recover_to = current * 0.95, 0.0
        elif admitted is not None:
            new, self._recover_to = min(current, admitted * 0.97), 0.0
            if self.rate > 0:
                # With a rate in force, one 429 costs at most 10%: a stray 429 while something
                # else (latency, the in-flight cap) held throughput down must not ratchet the
                # rate down to that throughput, 429 after 429.
                new = max(new, current * 0.9)
        else:
            new, self._recover_to = current * self.decrease, current * 0.8
        self.rate = max(self.min_rps, new)

    def learn_limit(self, server_rps: float, margin: float = 0.98) -> None:
        """The server told us its limit (x-ratelimit-limit-req-minute): never go above it."""
        if server_rps <= 0:
            return
        self.learned = True
        if 0 < self.configured <= server_rps:
            return  # the configured rate already fits under the announced limit
        target = server_rps * margin
        if self.ceiling <= 0 or target < self.ceiling:
            self.ceiling = target
        if self.rate <= 0 or self.rate > self.ceiling:
            self.rate = self.ceiling

    def succeeded(self) -> None:
        """A request went through: creep back up towards the ceiling, about 2% a second."""
        self._successes.append(self._clock())
        if self.rate <= 0:
            return
        now = self._successes[-1]
        if self.rate < self._recover_to:
            new = self.rate * 1.05  # a blind back-off overshot: climb back fast
        elif now - self._decreased_at > QUIET_SECONDS:
            new = self.rate + QUIET_STEP  # no 429 for a while: the limit is further up
        else:
            new = self.rate + PROBE_STEP  # just under the last 429: probe slowly
        self.rate = min(self.ceiling, new) if self.ceiling > 0 else new
