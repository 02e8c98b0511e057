"""One rate limiter per endpoint, shared by every request: a hard cap, a learned limit, and a
concurrency gate sized by Little's law.

- `rps=N` is a HARD cap: no window of 1 s (plus a small jitter margin) ever holds more than N
  of our sends. Sends are spaced evenly and checked against a log of the actual send times
  (when the body left, once the backend says so: `went_out`), so a caller that wakes late never
  takes an earlier slot and never makes N + 1.
- `rps=None` (auto) learns the limit: from `x-ratelimit-*` headers when the server sends them
  (`observe(RateInfo)`, called by the backend for every answer), else from 429s: the number
  of our sends the server admitted in the second before a rejection IS its window; we keep
  to it and try one more now and then.
- `rps=0` means no limit of ours (the local engine); a server that pushes back is still heard.
- In-flight requests follow Little's law: rate x latency x headroom + a few, between a floor
  and a ceiling (`max_in_flight`, when set, is a hard cap). The runner keeps `demand()`
  requests ready so the pipe stays full.
- A stray 429 costs only that request its Retry-After; 429s that cluster pause everyone.

The policy is written out in docs/rate-limits.md.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import StopRequested
from pipeline.transport.inflight_gate import InFlightGate
from pipeline.transport.jitter_margin import MARGIN_MAX
from pipeline.transport.limit_learner import LimitLearner, SendLog, Window

CAP_MARGIN = 0.01  # the jitter margin a hard cap starts with: 1 / 1.01 = 0.99 of the cap
AUTO_MARGIN = 0.02  # ... a learned or announced limit (its 429s cost more: they teach it)
CATCH_UP = 0.5  # how late a send may be and still keep its schedule (the windows still hold)
TIME_EPSILON = 1e-6  # closer than this is now (a sleep that short may not move the clock)
MAX_PAUSE = 900.0  # a Retry-After beyond 15 minutes is treated as 15 minutes
DEFAULT_RETRY_AFTER = 1.0  # a 429 without Retry-After: one window
IN_FLIGHT_CEILING = 2048  # safety ceiling of the in-flight target when max_in_flight is unset
UNLIMITED_IN_FLIGHT = 64  # in flight with no rate at all (rps 0, nothing learned)
CLUSTER_COUNT = 3  # this many 429s within CLUSTER_SECONDS pause everyone
CLUSTER_SECONDS = 1.0
GRANTS_PER_TURN = 4  # slots a pacer that is behind may grant in one turn of the loop
READY_SECONDS = 0.5  # requests kept ready beyond those in flight: this long of sends, at most


# ---- what the server said ---------------------------------------------------------------------


@dataclass(frozen=True)
class RateInfo:
    """What one answer (200, 429 or other) said about the server's rate limit.

    Counts are requests; None means the answer did not say.
    """

    status: int
    limit_second: int | None = None
    remaining_second: int | None = None
    limit_minute: int | None = None
    remaining_minute: int | None = None
    retry_after: float | None = None

    @property
    def announces_limit(self) -> bool:
        return self.limit_second is not None or self.limit_minute is not None


class RateListener(Protocol):
    """What a backend reports every answer to (the endpoint's RateLimiter)."""

    def observe(self, info: RateInfo) -> None: ...


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WINDOW = re.compile(r"w\s*=\s*(\d+)")


def _count(headers: Mapping[str, str], *names: str) -> int | None:
    """The first header of `names` that holds a number (its first number: "100, 100;w=60")."""
    for name in names:
        value = headers.get(name)
        if value:
            match = _NUMBER.search(value)
            if match:
                return int(float(match.group()))
    return None


def rate_info_from_headers(status: int, headers: Mapping[str, str],
                           retry_after: float | None = None) -> RateInfo:
    """Read Mistral's `x-ratelimit-{limit,remaining}-req-minute`, the `-req-second` variant,
    OpenAI-style `x-ratelimit-{limit,remaining}-requests` (per minute) and the IETF
    `RateLimit-Limit/-Remaining` with `RateLimit-Policy: N;w=1|60`."""
    limit_minute = _count(headers, "x-ratelimit-limit-req-minute", "x-ratelimit-limit-requests")
    remaining_minute = _count(headers, "x-ratelimit-remaining-req-minute",
                              "x-ratelimit-remaining-requests")
    limit_second = _count(headers, "x-ratelimit-limit-req-second")
    remaining_second = _count(headers, "x-ratelimit-remaining-req-second")
    policy = headers.get("ratelimit-policy") or ""
    window = _WINDOW.search(policy)
    if window and window.group(1) in ("1", "60"):
        limit = _count(headers, "ratelimit-limit")
        remaining = _count(headers, "ratelimit-remaining")
        if window.group(1) == "1" and limit_second is None:
            limit_second, remaining_second = limit, remaining
        elif window.group(1) == "60" and limit_minute is None:
            limit_minute, remaining_minute = limit, remaining
    return RateInfo(status, limit_second, remaining_second, limit_minute, remaining_minute,
                    retry_after)


# ---- the limiter ------------------------------------------------------------------------------


class Ticket:
    """One request's pass through the limiter: when it was sent (when the pacer let it go, then
    when its bytes left if the backend says so), and whether it was refused."""

    __slots__ = ("sent_at", "rejected", "done", "on_wire")

    def __init__(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.rejected = False
        self.done = False
        self.on_wire = False  # the backend said when it left (`RateLimiter.went_out`)


@dataclass(frozen=True)
class LimiterSnapshot:
    """The limiter's state, for progress lines and metrics."""

    rate: float  # requests per second it paces at now (0: no limit)
    limit_source: str  # configured | headers | 429s | ramp | none
    target_in_flight: int
    in_flight: int
    waiting: int
    latency: float | None  # the mean latency Little's law uses (s), None before any answer
    rejections: int  # 429s seen
    pauses: int  # global pauses (clustered 429s, remaining = 0)
    margin: float  # the jitter margin added to every window (s)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def configured_windows(rps: float) -> list[Window]:
    """A configured rate as a hard window: N >= 1 -> floor(N) per second; N < 1 -> one per 1/N s."""
    if rps >= 1:
        return [Window(int(math.floor(rps)), 1.0, "configured")]
    return [Window(1, 1.0 / rps, "configured")]


class LatencyEstimate:
    """The mean answer latency Little's law uses: an EWMA of answered requests (from send to
    answer); before the first answer, the age of the oldest request in flight (a slow first
    answer must raise the in-flight target while it is awaited, not after)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.mean: float | None = None
        self._outstanding: deque[Ticket] = deque()  # in send order; answered ones dropped lazily

    def sent(self, ticket: Ticket) -> None:
        if self.mean is None:
            self._outstanding.append(ticket)

    def ended(self, ticket: Ticket, answered: bool) -> None:
        """`ticket` ended; an answer (not a 429, not an error) feeds the mean."""
        self._drop_ended()
        if not answered:
            return
        seconds = self._clock() - ticket.sent_at
        if self.mean is None:
            self.mean = seconds
            self._outstanding.clear()  # only needed before the first answer
        else:
            self.mean = 0.95 * self.mean + 0.05 * seconds

    def current(self) -> float | None:
        if self.mean is not None:
            return self.mean
        self._drop_ended()
        if not self._outstanding:
            return None
        return self._clock() - self._outstanding[0].sent_at

    def _drop_ended(self) -> None:
        while self._outstanding and self._outstanding[0].done:
            self._outstanding.popleft()


class RateLimiter:
    """Paces sends, gates concurrency, learns the server's limit. One per endpoint.

    Runner-facing figures: `target_in_flight` (how many requests may be in flight now),
    `in_flight` (sent, not yet answered), `waiting` (callers blocked in `slot()`) and
    `demand()` (how many more requests the runner should have ready to keep the pipe full).
    """

    def __init__(
        self,
        rps: float | None,
        max_in_flight: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        initial_rps: float = 4.0,
        headroom: float = 1.25,
        extra_in_flight: int = 4,
        min_in_flight: int = 4,
        ceiling: int = IN_FLIGHT_CEILING,
        margin: float | None = None,
    ) -> None:
        """`margin`: the jitter margin to start with; by default CAP_MARGIN under `rps: N`
        (the operator knows the limit: sit close to it) and AUTO_MARGIN otherwise."""
        if margin is None:
            margin = CAP_MARGIN if rps and rps > 0 else AUTO_MARGIN
        self.configured = rps
        self.max_in_flight = max_in_flight if max_in_flight and max_in_flight > 0 else None
        self.headroom = headroom
        self.extra_in_flight = extra_in_flight
        self.min_in_flight = min_in_flight
        self.ceiling = min(ceiling, self.max_in_flight) if self.max_in_flight else ceiling
        self._clock = clock
        self._configured_windows = configured_windows(rps) if rps else []
        self._header_windows: dict[str, Window] = {}
        self._log = SendLog()  # our sends' times, for the windows
        self._gate = InFlightGate(lambda: self.target_in_flight)
        self._learner = LimitLearner(
            self._log, lambda: [*self._configured_windows, *self._header_windows.values()],
            self._gate.admit, initial_rps=initial_rps, margin=margin)
        self._latency = LatencyEstimate(clock)
        if rps is None:
            # Auto mode's slow start: the ramp from the first send (it grows only while
            # callers queue for it, so the time before that send does not count).
            self._learner.start_ramp(clock())
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._holding = False  # a caller holds the pacer (see `_pace`)
        self._line: deque[asyncio.Future[float | None]] = deque()  # callers waiting for it
        self._sleepers: set[asyncio.Future[None]] = set()
        self._waiting = 0
        self._recent_429: deque[float] = deque()
        self.in_flight = 0
        self.rejections = 0
        self.pauses = 0
        self.closed = False

    # ---- the runner's view ---------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Callers blocked in `slot()` (behind the gate, a pause or the pacing)."""
        return self._waiting

    @property
    def rate(self) -> float:
        """Requests per second the limiter paces at now; 0 when nothing limits it."""
        interval = self._interval()
        return 1.0 / interval if interval > 0 else 0.0

    @property
    def latency(self) -> float | None:
        """The mean answer latency Little's law uses (`LatencyEstimate`)."""
        return self._latency.current()

    @property
    def target_in_flight(self) -> int:
        """Requests allowed in flight: rate x latency x headroom + a few (Little's law),
        at least `min_in_flight`, at most the ceiling (`max_in_flight` when set)."""
        rate = self.rate
        if rate <= 0:
            target = self.max_in_flight or UNLIMITED_IN_FLIGHT
        else:
            latency = self.latency or 1.0
            target = math.ceil(rate * latency * self.headroom) + self.extra_in_flight
        return max(min(self.min_in_flight, self.ceiling), min(target, self.ceiling))

    def demand(self) -> int:
        """How many more requests the runner should have ready: target - in flight - waiting,
        but no more waiting than READY_SECONDS of sends at the pace (+ a few).

        Why the cap: the headroom of Little's law is a share of rate x latency, and what is
        not in flight waits in line for the pacer, each with its document open. At R = 200
        and L = 8 s that was ~400 documents ready for two seconds of sends, where half a
        second covers the time to open one (read, claim, probe: tens of ms)."""
        room = self.target_in_flight - self.in_flight
        rate = self.rate
        if rate > 0:
            room = min(room, math.ceil(rate * READY_SECONDS) + self.extra_in_flight)
        return max(0, room - self._waiting)

    def snapshot(self) -> LimiterSnapshot:
        return LimiterSnapshot(self.rate, self.limit_source, self.target_in_flight, self.in_flight,
                               self._waiting, self._latency.mean, self.rejections, self.pauses,
                               self.margin)

    def summary(self) -> dict[str, object]:
        """What the run report keeps of the limiter: the pace at the end, the limit and where
        it came from, what 429s cost (an operator can set `rps:` from it next time)."""
        return {
            "limit_source": self.limit_source,
            "rate_per_second": round(self.rate, 2),
            "windows": [{"count": w.count, "seconds": w.seconds, "source": w.source}
                        for w in self.windows],
            "margin_s": round(self.margin, 3),
            "rejections": self.rejections,
            "pauses": self.pauses,
        }

    @property
    def margin(self) -> float:
        """The jitter margin added to every window now (s)."""
        return self._learner.margin

    @property
    def limit_source(self) -> str:
        if self._learner.learned is not None:
            return "429s"
        if self._header_windows:
            return "headers"
        if self._configured_windows:
            return "configured"
        return "ramp" if self._learner.ramp is not None else "none"

    @property
    def windows(self) -> list[Window]:
        """Every window in force: configured, announced, learned."""
        return self._learner.windows()

    # ---- holding a request's place ---------------------------------------------------------

    def close(self) -> None:
        """No request may start from now on: every waiter raises StopRequested."""
        self.closed = True
        for sleeper in list(self._sleepers):
            _resolve(sleeper)
        self._gate.close()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Hold one request's place: the concurrency gate, any pause, the pacing.

        Yields the request's Ticket; report a 429 with `rejected(ticket, retry_after)`.
        An answer that leaves the block without an exception feeds the latency estimate.
        """
        self._waiting += 1
        try:
            if self.closed:
                raise StopRequested()
            await self._gate.enter()
            try:
                sent_at = await self._pace()
            except BaseException:
                self._gate.leave()
                raise
        finally:
            self._waiting -= 1
        ticket = Ticket(sent_at)
        self.in_flight += 1
        self._latency.sent(ticket)
        answered = False
        try:
            yield ticket
            answered = True
        finally:
            self.in_flight -= 1
            ticket.done = True
            self._latency.ended(ticket, answered and not ticket.rejected)
            self._gate.leave()

    def went_out(self, ticket: Ticket) -> None:
        """The request of `ticket` is leaving now (the backend tells, through `on_wire`): its
        send is logged at this time instead of when the pacer let it go, so that the windows
        count what the server will see. A busy loop sends a request a turn or two after its
        slot, by a varying amount (0.2-60 ms at R = 200): with the pacer's times in the log,
        that lateness used up the jitter margin at times, leaving none for the network's and
        the server's own. Only the first call counts (aiohttp may write a body in pieces)."""
        if ticket.on_wire or ticket.done:
            return
        ticket.on_wire = True
        now = self._clock()
        if now > ticket.sent_at:
            self._log.went_out(ticket.sent_at, now)
            ticket.sent_at = now

    # ---- pacing ---------------------------------------------------------------------------

    def _interval(self) -> float:
        """Seconds between two sends: the tightest window's even spacing (or the ramp's)."""
        interval, margin, ramp = 0.0, self._learner.margin, self._learner.ramp
        for window in self.windows:
            interval = max(interval, (window.seconds + margin) / window.count)
        if interval == 0.0 and ramp is not None:
            interval = 1.0 / ramp
        return interval

    def _due_at(self, slot: float) -> float:
        """When a send for `slot` may go: its slot, after any pause, within every window."""
        return max(slot, self._paused_until, self._window_free_at())

    def _window_free_at(self) -> float:
        """The earliest time a send keeps every window within its count."""
        free = -math.inf
        for window in self.windows:
            last = self._log.nth_last(window.count)
            if last is not None:
                free = max(free, last + window.seconds + self._learner.margin)
        return free

    def _prune(self, now: float) -> None:
        keep = max((w.seconds for w in self.windows), default=1.0) + MARGIN_MAX + 1.0
        keep = max(keep, 2.0 + MARGIN_MAX)  # a second of history for the 429 estimate
        self._log.prune(now, keep)

    async def _pace(self) -> float:
        """Wait for this request's turn; returns its send time (already logged).

        One caller at a time holds the pacer and sleeps until its slot; the others wait in
        line. A holder that finds the schedule behind (a busy loop woke it late) also grants
        the next few in line their slots at once (`_grant_due`), each checked against the
        windows as its own: a turn of a busy loop takes milliseconds, and a pacer that handed
        over once per turn could not send more than one request per turn (at R = 200 with
        50-page documents it granted 145-198 a second with a hundred callers in line). (A
        dispatcher that released every due caller at once was tried: on the strict server
        its bunched sends shared one timestamp, the 429 estimate of what the server admitted
        counted too few, and 3 of 5 runs at R = 200 settled at 0.76-0.78 of R.)"""
        if self._holding or self._line:
            turn: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
            self._line.append(turn)
            try:
                granted = await turn
            except BaseException:
                if not turn.done():
                    self._line.remove(turn)
                elif not turn.cancelled() and turn.result() is None:
                    self._pass_the_pacer()  # made holder, but cancelled before it could act
                # (a slot granted and then cancelled stays in the log: one send too few)
                raise
            if granted is not None:
                return granted
            limited = True
        else:
            self._holding, limited = True, False
        try:
            return await self._hold_the_pacer(limited)
        finally:
            self._pass_the_pacer()

    def _pass_the_pacer(self) -> None:
        """The first caller in line becomes the holder, or nobody holds the pacer."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._holding = False

    async def _hold_the_pacer(self, limited: bool) -> float:
        paused = False  # held by a pause (429s), not by the schedule or a window
        while True:
            if self.closed:
                raise StopRequested()
            now = self._clock()
            self._learner.grow(now, limited)
            interval = self._interval()
            # A caller that wakes late (a busy loop) keeps its place in the schedule, up to
            # CATCH_UP s, so lateness is not rate lost for good; after idle time the schedule
            # restarts from now. The windows, not the schedule, guarantee the counts.
            slot = self._next_slot if self._next_slot >= now - max(0.5 * interval, CATCH_UP) \
                else now
            at = self._due_at(slot)
            if at > now + TIME_EPSILON:
                limited = True
                paused = paused or self._paused_until > slot + TIME_EPSILON
                await self._sleep(at - now)
                continue
            self._log.add(now)
            self._prune(now)
            # Catching up is for a loop that woke late, not for time the server asked us
            # to wait: after a pause the schedule restarts from now (else every caller
            # behind the pause would go at once when it ends).
            self._next_slot = (now if paused else slot) + interval
            if not paused and self.windows:  # a count known: see `_grant_due`
                self._grant_due(now, interval)
            self._gate.admit()  # the ramp or the latency may have raised the target
            return now

    def _grant_due(self, now: float, interval: float) -> None:
        """Callers in line whose slots are already due (the schedule is behind) get them now,
        at most GRANTS_PER_TURN - 1 of them: each slot logged at `now`, within every window.
        Only once a per-window count is known (configured, announced or learned): while the
        first count is learned from a 429, sends that share a timestamp hide from the count of
        what the server admitted before the refused one (`SendLog.admitted_before`)."""
        granted = 1
        while self._line and granted < GRANTS_PER_TURN:
            if self._due_at(self._next_slot) > now + TIME_EPSILON:
                return
            turn = self._line.popleft()
            if turn.done():  # cancelled while in line
                continue
            self._log.add(now)
            self._next_slot += interval
            turn.set_result(now)
            granted += 1

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on close(). A bare timer future: cheaper than wait_for,
        which makes a task per call (the pacer sleeps once per send). Tests on a virtual clock
        replace this."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _resolve, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            handle.cancel()
            self._sleepers.discard(future)

    # ---- what answers teach -------------------------------------------------------------------

    def observe(self, info: RateInfo) -> None:
        """An answer's rate headers (the backend calls this for every answer): an announced
        limit becomes a window; remaining = 0 pauses everyone until the window frees."""
        now = self._clock()
        if info.limit_second is not None and info.limit_second > 0:
            self._header_windows["second"] = Window(info.limit_second, 1.0, "headers")
        if info.limit_minute is not None and info.limit_minute > 0:
            self._header_windows["minute"] = Window(info.limit_minute, 60.0, "headers")
            if info.limit_second is None and info.limit_minute % 60 == 0:
                # A per-minute limit that is a whole number per second: keep each second to
                # it too, so a server that enforces it per second never sees a burst.
                self._header_windows["second"] = Window(info.limit_minute // 60, 1.0, "headers")
        if info.announces_limit:
            self._learner.stop_ramp()
        if info.remaining_second == 0 or info.remaining_minute == 0:
            seconds = 1.0 if info.remaining_second == 0 else 60.0
            count = info.limit_second if info.remaining_second == 0 else info.limit_minute
            self._pause(self._window_frees(now, seconds, count, info.retry_after))
        self._gate.admit()

    def _window_frees(self, now: float, seconds: float, count: int | None,
                      retry_after: float | None) -> float:
        """When the server's full window frees a place: from our log of sends when it holds
        the window's count, else the Retry-After, else one second."""
        last = self._log.nth_last(count) if count else None
        if last is not None:
            return last + seconds + self._learner.margin
        return now + (DEFAULT_RETRY_AFTER if retry_after is None else min(retry_after, MAX_PAUSE))

    def _pause(self, until: float) -> None:
        if until > self._paused_until:
            self.pauses += 1
            self._paused_until = until
            self._learner.hold_ramp(until)

    def rejected(self, ticket: Ticket, retry_after: float | None) -> float:
        """A 429 for `ticket`. Returns how long this request should wait before its retry:
        its own Retry-After for a stray 429; 0 when the 429s cluster, as everyone is then
        paused here until the window frees."""
        now = self._clock()
        ticket.rejected = True
        self.rejections += 1
        self._log.refused(ticket.sent_at)
        wait = DEFAULT_RETRY_AFTER if retry_after is None else min(max(0.0, retry_after), MAX_PAUSE)
        self._recent_429.append(now)
        while self._recent_429 and self._recent_429[0] <= now - CLUSTER_SECONDS:
            self._recent_429.popleft()
        clustered = len(self._recent_429) >= CLUSTER_COUNT
        self._learner.rejected(ticket.sent_at, now, clustered)
        if clustered:
            self._pause(self._cluster_pause_ends(now, wait))
            return 0.0
        return wait

    def _cluster_pause_ends(self, now: float, wait: float) -> float:
        """When a pause for clustered 429s ends: the Retry-After, but no later than our log of
        sends says the tightest known per-second window frees a place (and no sooner than the
        jitter margin), when the Retry-After is no longer than that window.

        Why: most gateways send `Retry-After` in whole seconds, at least 1, for a sliding
        window whose next place frees in milliseconds. Paused for the whole second, a stall's
        handful of 429s cost every request a second: `rps: 200` against the strict server
        with 50-page documents fell from 0.98 to 0.89 of R (docs/rate-limits.md). A longer
        Retry-After (a per-minute quota, a penalty) is obeyed as it is, as is any wait when no
        per-second count is known or the log holds fewer sends than it."""
        until = now + wait
        per_second = [w for w in self.windows if w.seconds <= 1.0]
        if not per_second or wait > 1.0:
            return until
        tightest = min(per_second, key=lambda w: w.count / w.seconds)
        frees = self._window_frees(now, tightest.seconds, tightest.count, wait)
        return min(until, max(now + self._learner.margin, frees))
