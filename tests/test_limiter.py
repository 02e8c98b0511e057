"""The rate limiter on virtual time, against a simulated strict server.

The server admits at most R requests in ANY sliding 1-second window (judged at arrival,
refused requests not counted), answers after a latency drawn per request, and refuses at once
with the exact wait until its window frees, as strict gateways do. The client keeps
`limiter.demand()` requests ready, as the runner does, and retries a 429 after the wait the
limiter gives it, as `call_with_retry` does. Minutes of traffic run in well under a second.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from multidict import CIMultiDict

from pipeline.errors import StopRequested
from pipeline.transport.limit_learner import SendLog
from pipeline.transport.ratelimit import (
    CAP_MARGIN,
    READY_SECONDS,
    RateInfo,
    RateLimiter,
    rate_info_from_headers,
)
from tests.virtual_loop import run_virtual

# ---- the simulated server and client ------------------------------------------------------------


@dataclass
class StrictServer:
    """At most `per_second` admissions in any sliding 1 s window; latency uniform in
    [0.5, 1.5] x `latency`; arrival `jitter` s after the send at most; optional headers."""

    per_second: int
    latency: float
    limiter: RateLimiter
    headers: bool = False
    jitter: float = 0.0
    stuck_first: float = 0.0  # the first admitted request takes this long more
    whole_seconds: bool = False  # Retry-After rounded up to whole seconds, at least 1 (gateways)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    window: deque[float] = field(default_factory=deque)
    admitted: list[float] = field(default_factory=list)
    rejected: int = 0

    def _info(self, status: int, retry_after: float | None = None) -> RateInfo:
        limit = self.per_second * 60
        return RateInfo(status, limit_minute=limit, remaining_minute=limit - len(self.admitted[-limit:]),
                        retry_after=retry_after)

    async def request(self) -> tuple[int, float | None]:
        if self.jitter:
            await asyncio.sleep(self.rng.uniform(0, self.jitter))
        now = asyncio.get_running_loop().time()
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        if len(self.window) >= self.per_second:
            wait = self.window[-self.per_second] + 1.0 - now
            if self.whole_seconds:
                wait = float(max(1, math.ceil(wait)))
            self.rejected += 1
            if self.headers:
                self.limiter.observe(self._info(429, wait))
            return 429, wait
        self.window.append(now)
        self.admitted.append(now)
        delay = self.rng.uniform(0.5, 1.5) * self.latency
        if len(self.admitted) == 1:
            delay += self.stuck_first
        await asyncio.sleep(delay)
        if self.headers:
            self.limiter.observe(self._info(200))
        return 200, None


async def one_request(limiter: RateLimiter, server: StrictServer) -> None:
    """One document's request with call_with_retry's 429 handling."""
    while True:
        async with limiter.slot() as ticket:
            status, retry_after = await server.request()
            if status == 429:
                wait = limiter.rejected(ticket, retry_after)
        if status == 200:
            return
        await asyncio.sleep(wait)


async def keep_pipe_full(limiter: RateLimiter, total: int, request: Callable[[], object]) -> None:
    """The runner's part: open another request while the limiter asks for more."""
    tasks: set[asyncio.Task[object]] = set()
    started = 0
    while started < total or tasks:
        while started < total and limiter.demand() > 0:
            tasks.add(asyncio.create_task(request()))  # type: ignore[arg-type]
            started += 1
            await asyncio.sleep(0)  # let it enter slot(): it counts as waiting from there
        await asyncio.sleep(0.01)
        for task in [t for t in tasks if t.done()]:
            task.result()
            tasks.discard(task)


def max_in_any_window(times: list[float], seconds: float = 1.0) -> int:
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - seconds:
            first += 1
        best = max(best, last - first + 1)
    return best


def steady_rate(times: list[float], skip: float) -> float:
    """Admissions per second after the first `skip` seconds, to the last admission."""
    times = sorted(times)
    start = times[0] + skip
    inside = [t for t in times if t >= start]
    return (len(inside) - 1) / (inside[-1] - inside[0])


@dataclass
class Outcome:
    server: StrictServer
    limiter: RateLimiter
    total: int

    @property
    def rejected_per_100(self) -> float:
        return 100.0 * self.server.rejected / self.total


def simulate(rps: float | None, per_second: int, latency: float, total: int, *,
             headers: bool = False, jitter: float = 0.002, stuck_first: float = 0.0,
             max_in_flight: int | None = None, whole_seconds: bool = False) -> Outcome:
    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(rps, max_in_flight, clock=loop.time)
        server = StrictServer(per_second, latency, limiter, headers=headers, jitter=jitter,
                              stuck_first=stuck_first, whole_seconds=whole_seconds)
        await keep_pipe_full(limiter, total, lambda: one_request(limiter, server))
        return Outcome(server, limiter, total)

    return run_virtual(main())


# ---- the hard cap ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_hard_cap_is_never_exceeded_in_any_window_even_with_a_stalling_loop(seed: int) -> None:
    """Callers arrive at random moments, some hold the limiter's slots while the loop stalls for
    up to 60 ms (every timer fires late): still never N + 1 sends in any 1-second window."""
    rng = random.Random(seed)
    n = 20

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(n, None, clock=loop.time)
        sends: list[float] = []

        async def caller() -> None:
            await asyncio.sleep(rng.uniform(0, 150))
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)
                await asyncio.sleep(rng.uniform(0.1, 3))

        async def staller() -> None:
            for _ in range(1500):
                await asyncio.sleep(rng.uniform(0, 0.2))
                loop.stall(rng.uniform(0, 0.06))

        await asyncio.gather(staller(), *(caller() for _ in range(3000)))
        return sends

    sends = run_virtual(main())
    assert len(sends) == 3000
    assert max_in_any_window(sends) <= n
    assert max_in_any_window(sends, 1.009) <= n  # and with room for jitter (the 10 ms margin)


def test_a_late_caller_does_not_take_an_earlier_slot() -> None:
    """A caller that wakes late must not be followed by one sent on the old schedule: that
    is how the old limiter made N + 1 in a window."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(4, None, clock=loop.time)
        sends: list[float] = []

        async def caller() -> None:
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)

        for _ in range(4):
            await caller()
        loop.stall(0.2)  # busy: the next caller arrives late for its slot
        await asyncio.gather(*(caller() for _ in range(12)))
        return sends

    sends = run_virtual(main())
    assert max_in_any_window(sends) <= 4
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert min(gaps) > 0.1, "evenly spaced: no two sends back to back"


def test_a_send_that_leaves_late_counts_when_it_left() -> None:
    """The backend says when a request's bytes leave (`went_out`), and the windows count that
    time, not the pacer's: here the first request leaves 0.3 s after its slot (a busy loop, a
    connection being made). Counted at its slot, the 11th send went out 1.01 s after it and a
    server that counts arrivals saw 11 in one second."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(10, None, clock=loop.time)
        arrivals: list[float] = []

        async def caller(held: float) -> None:
            async with limiter.slot() as ticket:
                await asyncio.sleep(held)
                limiter.went_out(ticket)
                arrivals.append(loop.time())
                left = ticket.sent_at
                await asyncio.sleep(0.05)
                limiter.went_out(ticket)  # only the first word counts (a body in pieces)
                assert ticket.sent_at == left

        late = asyncio.ensure_future(caller(0.3))
        await asyncio.sleep(0)
        await asyncio.gather(late, *(caller(0.0) for _ in range(30)))
        return arrivals

    arrivals = run_virtual(main())
    assert len(arrivals) == 31
    assert max_in_any_window(arrivals) <= 10
    assert max_in_any_window(arrivals, 1.009) <= 10


def test_the_send_log_keeps_the_time_a_send_left_in_order() -> None:
    log = SendLog()
    for t in (1.0, 1.1, 1.2, 1.3):
        log.add(t)
    log.went_out(1.1, 1.25)
    assert list(log.times) == [1.0, 1.2, 1.25, 1.3]
    log.refused(1.3)
    log.went_out(1.3, 1.4)  # refused meanwhile: the server did not count it, nor do we
    assert list(log.times) == [1.0, 1.2, 1.25]
    log.prune(2.1, 1.0)
    log.went_out(1.0, 2.05)  # pruned while it waited for a connection: it arrives now
    assert list(log.times) == [1.2, 1.25, 2.05]
    assert log.count == 4


def test_sends_granted_at_one_time_leave_one_by_one() -> None:
    """The pacer grants a few due slots at one timestamp (`_grant_due`); each send moves on
    its own, and the log keeps every one of them, in order."""
    log = SendLog()
    for t in (1.0, 2.0, 2.0, 2.0, 2.5):
        log.add(t)
    log.went_out(2.0, 2.7)
    log.went_out(2.0, 2.01)
    assert list(log.times) == [1.0, 2.0, 2.01, 2.5, 2.7]


@pytest.mark.parametrize("stall", [0.1, 0.3, 0.45])
def test_sends_a_stalled_loop_missed_are_made_up_within_the_windows(stall: float) -> None:
    """A full garbage collection stalls the loop for 0.1-0.4 s at R = 200. The sends it missed
    are made up at once (the windows allow it: nothing was sent meanwhile), so a stall costs
    no rate; the windows still hold. (With 0.1 s of catch-up, a 0.3 s stall lost 40 sends.)"""
    n = 200

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(n, None, clock=loop.time)
        sends: list[float] = []

        async def caller() -> None:
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)

        async def staller() -> None:
            await asyncio.sleep(5.0)
            loop.stall(stall)

        await asyncio.gather(staller(), *(caller() for _ in range(n * 12)))
        return sends

    sends = run_virtual(main())
    assert max_in_any_window(sends) <= n
    assert max_in_any_window(sends, 1.009) <= n  # within the 10 ms margin too
    start = sends[0]
    during = sum(1 for t in sends if start + 2.0 <= t < start + 11.0)
    assert during >= 9 * n / (1 + CAP_MARGIN) - 2, f"{during} sends in 9 s around a {stall} s stall"


def sends_on_a_slow_loop(make: Callable[[Callable[[], float]], RateLimiter], callers: int,
                         turn: float) -> tuple[list[float], RateLimiter]:
    """The send times of `callers` requests through the limiter `make(clock)` builds, on a
    virtual loop whose every turn takes `turn` seconds."""

    async def main() -> tuple[list[float], RateLimiter]:
        loop = asyncio.get_running_loop()
        limiter = make(loop.time)
        sends: list[float] = []
        done = False

        async def caller() -> None:
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)

        async def busy() -> None:
            while not done:
                loop.stall(turn)  # every turn of the loop costs this much
                await asyncio.sleep(0)

        spinner = asyncio.create_task(busy())
        await asyncio.gather(*(caller() for _ in range(callers)))
        done = True
        await spinner
        return sends, limiter

    return run_virtual(main())


@pytest.mark.parametrize("turn", [0.006, 0.008, 0.012])
def test_a_loop_whose_every_turn_takes_milliseconds_still_sends_at_the_cap(turn: float) -> None:
    """A busy run's event loop takes 5-12 ms a turn (hundreds of documents at R = 200). A
    pacer that handed over to the next caller once per turn sent at most one request a turn:
    83-167 a second here, whatever the cap. Granting the slots that are due in one turn keeps the
    cap, and the windows still hold."""
    n = 200
    sends, _ = sends_on_a_slow_loop(lambda clock: RateLimiter(n, None, clock=clock), n * 12, turn)
    assert max_in_any_window(sends) <= n
    assert max_in_any_window(sends, 1.009) <= n
    rate = steady_rate(sends, skip=1.0)
    assert rate >= 0.95 * n, f"{rate:.1f} a second with {turn * 1000:g} ms a turn"


def test_while_no_count_is_known_a_busy_loop_still_sends_one_at_a_time() -> None:
    """Auto mode's ramp (no count configured, announced or learned yet): sends that shared a
    timestamp would hide from the count of what the server admitted before a 429, so the
    pacer grants no slots ahead, however slow the loop's turns."""
    sends, limiter = sends_on_a_slow_loop(
        lambda clock: RateLimiter(None, None, clock=clock, initial_rps=500), 300, 0.012)
    assert limiter.limit_source == "ramp"
    assert len(set(sends)) == len(sends) == 300


@pytest.mark.parametrize("when", ["in line", "just made the holder"])
def test_a_caller_cancelled_while_waiting_for_the_pacer_holds_nobody_up(when: str) -> None:
    """Four callers at rps 1: the third is cancelled while in line, or just as the pacer is
    handed to it; the fourth takes its place on the schedule."""

    async def main() -> tuple[list[tuple[str, float]], bool]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(1, None, clock=loop.time)
        sends: list[tuple[str, float]] = []
        tasks: dict[str, asyncio.Task[None]] = {}

        async def caller(name: str) -> None:
            async with limiter.slot() as ticket:
                sends.append((name, ticket.sent_at))
                if name == "second" and when == "just made the holder":
                    tasks["third"].cancel()  # the pacer was passed to it a moment ago

        for name in ("first", "second", "third", "fourth"):
            tasks[name] = asyncio.create_task(caller(name))
            await asyncio.sleep(0)
        if when == "in line":
            tasks["third"].cancel()
        await asyncio.wait(tasks.values())
        return sends, tasks["third"].cancelled()

    sends, cancelled = run_virtual(main())
    start = sends[0][1]
    assert cancelled
    assert [(name, round(t - start, 2)) for name, t in sends] == [
        ("first", 0.0), ("second", 1.01), ("fourth", 2.02)]


@pytest.mark.parametrize(("per_second", "latency"), [(10, 2.0), (50, 0.3), (200, 8.0)])
def test_at_a_hard_cap_equal_to_the_servers_limit_it_runs_at_99_percent_with_no_429(
        per_second: int, latency: float) -> None:
    """`rps: N` starts with a 10 ms margin (1 / 1.01 of N); sends reach the server up to 5 ms
    late: no 429."""
    total = per_second * 40
    out = simulate(per_second, per_second, latency, total, jitter=0.005)
    assert out.rejected_per_100 <= 0.5
    assert max_in_any_window(out.server.admitted) <= per_second
    assert steady_rate(out.server.admitted, skip=latency * 1.5 + 2) >= 0.985 * per_second


def test_a_fractional_rate_is_a_whole_count_per_second() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(2.5, None, clock=loop.time)
        sends = []
        for _ in range(20):
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    assert max_in_any_window(run_virtual(main())) == 2


def test_an_unlimited_limiter_never_waits() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(0, None, clock=loop.time)
        sends = []
        for _ in range(50):
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)
        return sends

    assert set(run_virtual(main())) == {1000.0}


# ---- auto: learning the limit ---------------------------------------------------------------------


@pytest.mark.parametrize(("per_second", "latency"), [(10, 0.3), (10, 8.0), (50, 2.0), (200, 2.0)])
def test_auto_without_headers_settles_at_95_percent_of_the_limit_with_few_429s(
        per_second: int, latency: float) -> None:
    total = per_second * 60
    out = simulate(None, per_second, latency, total)
    assert out.limiter.limit_source == "429s"
    assert out.rejected_per_100 <= 2.0
    assert steady_rate(out.server.admitted, skip=latency * 1.5 + 10) >= 0.95 * per_second


@pytest.mark.parametrize("per_second", [50, 200])
def test_a_busy_client_whose_sends_arrive_late_still_finds_the_limit(per_second: int) -> None:
    """Sends reach the server up to 50 ms late (a loaded event loop): 429s come every second
    or so. They must add up to a lower count (they once merged into one endless event, and at
    200/s three events never fitted in 300 sends), so the rate settles with 429s rare."""
    out = simulate(None, per_second, 2.0, per_second * 150, jitter=0.05)
    assert out.rejected_per_100 <= 1.0
    assert steady_rate(out.server.admitted, skip=30) >= 0.94 * per_second


@pytest.mark.parametrize(("per_second", "latency"), [(10, 2.0), (50, 0.3), (200, 8.0)])
def test_auto_with_headers_settles_at_97_percent_with_almost_no_429s(
        per_second: int, latency: float) -> None:
    total = per_second * 40
    out = simulate(None, per_second, latency, total, headers=True)
    assert out.limiter.limit_source == "headers"
    assert out.rejected_per_100 <= 0.5
    assert steady_rate(out.server.admitted, skip=latency * 1.5 + 3) >= 0.97 * per_second


def test_announced_limits_become_windows_and_remaining_zero_pauses() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(None, None, clock=loop.time)
        limiter.observe(RateInfo(200, limit_minute=600, remaining_minute=599))
        rate = limiter.rate
        before = loop.time()
        limiter.observe(RateInfo(200, limit_minute=600, remaining_minute=0, retry_after=7.0))
        async with limiter.slot() as ticket:
            pass
        return rate, before, ticket.sent_at

    rate, before, sent = run_virtual(main())
    assert 9.7 <= rate <= 10.0, "600 a minute: 10 a second, a jitter margin under"
    assert sent >= before + 7.0, "remaining 0: everyone waits until the window frees"


def test_a_configured_rate_above_the_announced_limit_yields_to_it() -> None:
    limiter = RateLimiter(50, None)
    limiter.observe(RateInfo(200, limit_second=20))
    assert 19 <= limiter.rate <= 20
    generous = RateLimiter(5, None)
    generous.observe(RateInfo(200, limit_minute=6000))
    assert generous.rate <= 5, "a generous server never raises the configured cap"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-ratelimit-limit-req-minute": "1200", "x-ratelimit-remaining-req-minute": "17"},
         RateInfo(200, limit_minute=1200, remaining_minute=17)),
        ({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0"},
         RateInfo(200, limit_minute=600, remaining_minute=0)),
        ({"x-ratelimit-limit-req-second": "20", "x-ratelimit-remaining-req-second": "3"},
         RateInfo(200, limit_second=20, remaining_second=3)),
        ({"RateLimit-Limit": "10", "RateLimit-Remaining": "4", "RateLimit-Policy": "10;w=1"},
         RateInfo(200, limit_second=10, remaining_second=4)),
        ({"RateLimit-Limit": "100", "RateLimit-Policy": "100;w=3600"}, RateInfo(200)),
        ({"x-ratelimit-limit-req-minute": "lots"}, RateInfo(200)),
        ({}, RateInfo(200)),
    ],
)
def test_rate_headers_are_read_in_their_common_spellings(headers: dict[str, str],
                                                         expected: RateInfo) -> None:
    assert rate_info_from_headers(200, CIMultiDict(headers)) == expected


# ---- concurrency from Little's law ----------------------------------------------------------------


def test_the_in_flight_target_follows_latency() -> None:
    short = simulate(50, 50, 1.0, 1000).limiter
    long = simulate(50, 50, 2.0, 1000).limiter
    assert short.latency is not None and long.latency is not None
    assert long.latency / short.latency == pytest.approx(2.0, rel=0.15)
    ratio = long.target_in_flight / short.target_in_flight
    assert 1.7 <= ratio <= 2.2, (short.target_in_flight, long.target_in_flight)
    # rate x latency x 1.25 + a few
    assert short.target_in_flight == pytest.approx(50 / 1.02 * short.latency * 1.25 + 4, abs=2)


def test_at_long_latency_half_a_second_of_sends_waits_ready_not_a_quarter_of_the_latency() -> None:
    """R = 200 and 8 s of latency: ~1,600 in flight. Little's law's headroom (x 1.25) alone kept
    ~400 more requests waiting for the pacer, each with its document open; READY_SECONDS keeps
    half a second's worth (100 + a few), and the rate holds."""

    async def main() -> tuple[int, list[float]]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(200, None, clock=loop.time)
        server = StrictServer(200, 8.0, limiter, jitter=0.002)
        most_waiting = 0

        async def watch() -> None:
            nonlocal most_waiting
            await asyncio.sleep(20.0)  # the latency is known by then
            while True:
                most_waiting = max(most_waiting, limiter.waiting)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await keep_pipe_full(limiter, 200 * 40, lambda: one_request(limiter, server))
        watcher.cancel()
        return most_waiting, server.admitted

    most_waiting, admitted = run_virtual(main())
    assert most_waiting <= math.ceil(200 / (1 + CAP_MARGIN) * READY_SECONDS) + 4 + 2, most_waiting
    assert steady_rate(admitted, 20) >= 0.97 * 200


def test_max_in_flight_is_a_hard_cap_and_demand_counts_waiters() -> None:
    async def main() -> tuple[int, int, int, int]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(0, 3, clock=loop.time)
        peak = 0
        release = asyncio.Event()

        async def request() -> None:
            nonlocal peak
            async with limiter.slot():
                peak = max(peak, limiter.in_flight)
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await asyncio.sleep(0.5)
        seen = (limiter.in_flight, limiter.waiting, limiter.demand())
        release.set()
        await asyncio.gather(*tasks)
        return (peak, *seen)

    peak, in_flight, waiting, demand = run_virtual(main())
    assert peak == 3 and in_flight == 3 and waiting == 2 and demand == 0


# ---- what a 429 costs -------------------------------------------------------------------------


def test_a_stray_429_costs_only_its_own_request_its_retry_after() -> None:
    async def main() -> tuple[float, float, float, float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, None, clock=loop.time)
        for _ in range(20):
            async with limiter.slot():
                pass
        before = limiter.rate
        async with limiter.slot() as ticket:
            wait = limiter.rejected(ticket, 1.0)
        start = loop.time()
        async with limiter.slot() as other:
            pass
        return before, limiter.rate, wait, other.sent_at - start

    before, after, wait, other_delay = run_virtual(main())
    assert wait == 1.0, "the refused request waits its Retry-After"
    assert other_delay < 0.1, "the others carry on"
    assert after >= 0.97 * before, "and the rate barely moves"


def test_clustered_429s_pause_everyone_until_the_window_frees() -> None:
    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, None, clock=loop.time)
        waits = []
        for _ in range(3):
            async with limiter.slot() as ticket:
                waits.append(limiter.rejected(ticket, 2.0))
        start = loop.time()
        async with limiter.slot() as other:
            pass
        return waits, other.sent_at - start

    waits, delay = run_virtual(main())
    assert waits[:2] == [2.0, 2.0] and waits[2] == 0.0, "the third is held by the global pause"
    assert delay >= 1.8


def _cluster_after_a_full_second(rps: float | None, retry_after: float) -> float:
    """Fill the limiter's window (20 sends), refuse the next three with `retry_after` (a
    cluster), and return how long after the third 429 the next request goes."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(rps, None, clock=loop.time)
        for _ in range(20):
            async with limiter.slot():
                pass
        for _ in range(3):
            async with limiter.slot() as ticket:
                limiter.rejected(ticket, retry_after)
        refused_at = loop.time()
        async with limiter.slot() as after:
            pass
        assert limiter.pauses == 1
        return after.sent_at - refused_at

    return run_virtual(main())


def test_a_whole_second_retry_after_pauses_a_cluster_only_until_the_window_frees() -> None:
    """Gateways round Retry-After up to whole seconds, at least 1, when the next place of a
    sliding window frees in milliseconds. With the count known and our log holding it, a
    cluster's pause ends when the log says a place frees (here at once: the three refused sends
    are out of the log), plus the jitter margin, not a second later for everyone."""
    delay = _cluster_after_a_full_second(20, 1.0)
    assert delay <= CAP_MARGIN + 1.01 / 20 + 1e-6  # the margin, then at most one interval


@pytest.mark.parametrize("retry_after", [1.5, 30.0])
def test_a_retry_after_longer_than_the_window_is_obeyed_in_full(retry_after: float) -> None:
    """A Retry-After longer than the window (a penalty, a per-minute quota) is what the server
    wants."""
    assert _cluster_after_a_full_second(20, retry_after) >= retry_after - 1e-6


def test_with_no_count_known_a_whole_second_retry_after_is_obeyed() -> None:
    """Refused from the first send (an exhausted quota): nothing to judge by, so everyone
    waits the second the server asked for."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(None, None, clock=loop.time)
        for _ in range(3):
            async with limiter.slot() as ticket:
                limiter.rejected(ticket, 1.0)
        refused_at = loop.time()
        async with limiter.slot() as after:
            pass
        assert limiter.windows == []
        return after.sent_at - refused_at

    assert run_virtual(main()) >= 1.0 - 1e-6


def test_a_hard_cap_keeps_its_rate_when_429s_say_whole_seconds() -> None:
    """`rps: 200` at the server's limit, sends arriving up to 30 ms late, every 429 saying
    `Retry-After: 1` (virtual time). Before, each cluster of 429s stopped everyone for a
    second: 0.89 of R on the strict server with 50-page documents."""
    exact = simulate(200, 200, 2.0, 12_000, jitter=0.03)
    whole = simulate(200, 200, 2.0, 12_000, jitter=0.03, whole_seconds=True)
    assert whole.server.rejected > 0, "the jitter made 429s: the case is exercised"
    assert steady_rate(whole.server.admitted, 20) >= 0.97 * 200
    assert steady_rate(whole.server.admitted, 20) >= 0.99 * steady_rate(exact.server.admitted, 20)
    assert whole.rejected_per_100 <= 0.5


def test_after_a_pause_the_callers_behind_it_go_at_the_pace_not_all_at_once() -> None:
    """A late caller keeps its place in the schedule (the sends a stalled loop missed are made
    up), but time the server asked us to wait is not made up: when a pause of 0.3 s ends, the
    callers queued behind it go one interval apart, not as a burst into the window that just
    refused us."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, None, clock=loop.time)
        sends: list[float] = []

        async def caller() -> None:
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at)

        for _ in range(3):  # a cluster of 429s: everyone waits 0.3 s
            async with limiter.slot() as ticket:
                limiter.rejected(ticket, 0.3)
        await asyncio.gather(*(caller() for _ in range(10)))
        return sends

    sends = run_virtual(main())
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert min(gaps) >= 0.9 * 1.02 / 20, f"sends bunched after the pause: gaps {gaps}"


def test_stray_429s_at_a_hard_cap_do_not_walk_the_rate_down() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(20, None, clock=loop.time)
        rates = []
        for i in range(2000):
            async with limiter.slot() as ticket:
                if i % 250 == 0:
                    limiter.rejected(ticket, 1.0)  # one in 250 refused (jitter)
            rates.append(limiter.rate)
        return rates

    rates = run_virtual(main())
    assert min(rates) >= 0.95 * 20 / 1.02
    assert sum(rates[-500:]) / 500 >= 0.97 * 20 / 1.02


# ---- a stuck first request ------------------------------------------------------------------------


def test_a_stuck_first_request_holds_nobody() -> None:
    out = simulate(None, 20, 0.5, 400, stuck_first=300.0)
    admitted = sorted(out.server.admitted)
    first = admitted[0]
    assert admitted[1] - first <= 0.25 + 0.01, "the ramp's first step, not the first answer"
    # 399 others done long before the stuck one answers, at the server's rate once learned
    done_by = admitted[-1]
    assert done_by - first < 40
    assert steady_rate(admitted, skip=8) >= 0.95 * 20


def test_auto_mode_sends_at_the_ramp_pace_before_any_answer_then_at_the_announced_limit() -> None:
    """Nobody waits for the first answer (a slow one would cost its whole latency); until an
    answer tells the limit, the sends follow the ramp: 4 a second, doubling every 0.25 s."""

    async def main() -> tuple[list[float], list[float], float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(None, None, clock=loop.time)
        start = loop.time()
        sends: list[float] = []
        answered = asyncio.Event()

        async def request() -> None:
            async with limiter.slot() as ticket:
                sends.append(ticket.sent_at - start)
                await answered.wait()

        tasks = [asyncio.create_task(request()) for _ in range(300)]
        await asyncio.sleep(1.0)
        before = list(sends)
        limiter.observe(RateInfo(200, limit_minute=3000, remaining_minute=2999))  # 50/s
        answered.set()
        await asyncio.gather(*tasks)
        return before, sends, limiter.rate

    before, sends, rate = run_virtual(main())
    assert before[:2] == pytest.approx([0.0, 0.25]), "one send, then the ramp's first step"
    assert 5 <= len(before) <= 25, before  # 4 a second doubling every 0.25 s, for 1 s
    assert rate == pytest.approx(50 / 1.02)
    after = [t for t in sends if t >= 2.0]
    assert 0.97 * 50 / 1.02 <= len(after) / (after[-1] - after[0]) <= 50


def test_close_stops_every_kind_of_waiter() -> None:
    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(None, 2, clock=loop.time)  # gate and pacing (the ramp) in play
        hold = asyncio.Event()

        async def request() -> None:
            async with limiter.slot():
                await hold.wait()

        tasks = [asyncio.create_task(request()) for _ in range(6)]
        await asyncio.sleep(0.1)  # one sent; one paced (the ramp's 0.25 s); four at the gate
        limiter.close()
        hold.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run_virtual(main())
    assert results[0] is None, "the request in flight finishes"
    assert all(isinstance(r, StopRequested) for r in results[1:]), results


def test_close_stops_every_caller_in_line_for_the_pacer() -> None:
    """No gate in the way (no in-flight cap): one caller holds the pacer, five wait in line
    behind it; close() ends them all, one turn after another, none left waiting."""

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(1, None, clock=loop.time)

        async def request() -> None:
            async with limiter.slot():
                pass

        await request()  # the next slot is a second away
        tasks = [asyncio.create_task(request()) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert limiter._holding and len(limiter._line) == 5
        limiter.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run_virtual(main())
    assert all(isinstance(r, StopRequested) for r in results), results


async def limit_changes_at_20_s(before: int, after: int, *, latency: float,
                                total: int) -> Outcome:
    """Auto mode against a server whose limit moves from `before` to `after` a second, 20 s in."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(None, None, clock=loop.time)
    server = StrictServer(before, latency, limiter)

    async def change_limit() -> None:
        await asyncio.sleep(20)
        server.per_second = after

    changer = asyncio.create_task(change_limit())
    await keep_pipe_full(limiter, total, lambda: one_request(limiter, server))
    await changer
    return Outcome(server, limiter, total)


def test_a_limit_learned_from_429s_is_tried_higher_now_and_then() -> None:
    """The server's limit rises from 10 to 12 a second: the limiter finds it within minutes,
    at the cost of a 429 per failed try."""

    out = run_virtual(limit_changes_at_20_s(10, 12, latency=0.3, total=12 * 120))
    late = [t for t in out.server.admitted if t >= out.server.admitted[-1] - 20]
    assert len(late) / 20 >= 0.9 * 12
    assert out.rejected_per_100 <= 2.0


def test_a_429_under_a_per_minute_window_alone_learns_what_the_server_admitted() -> None:
    """Only a per-minute limit is known (announced): a 429 with fewer than two sends in the
    second before it teaches nothing (it used to fail on an empty list of per-second counts);
    with more, the server's window is what it let through."""
    from pipeline.transport.limit_learner import LimitLearner, SendLog, Window

    log = SendLog()
    changes: list[int] = []
    learner = LimitLearner(log, lambda: [Window(600, 60.0, "headers")],
                           lambda: changes.append(1), initial_rps=4.0, margin=0.02)
    log.add(100.0)
    learner.rejected(100.5, 100.6, clustered=False)
    assert learner.learned is None and changes == []
    for t in (101.0, 101.2, 101.4):
        log.add(t)
    learner.rejected(101.5, 101.6, clustered=False)
    assert learner.learned == Window(3, 1.0, "429s") and changes == [1]


def test_one_refusal_at_clearly_fewer_sends_is_not_a_lower_limit_a_second_one_is() -> None:
    """A loop stalled by a full garbage collection sends what it logged before the stall with
    what comes after: the server's second then holds more than our log says, and a cluster of
    429s comes at 178 of 200 logged sends. That alone must not take the limit to 178 (it
    stayed there: quiet never lasts the 15 s a try higher needs at R = 200). A second event
    at clearly fewer sends within 10 s is a lower limit (others share the quota)."""
    from pipeline.transport.limit_learner import LimitLearner, SendLog, Window

    log = SendLog()
    learner = LimitLearner(log, list, lambda: None, initial_rps=4.0, margin=0.02)
    learner.learned = Window(200, 1.0, "429s")
    learner.changed_at = 0.0

    def second_of_sends(start: float, count: int) -> None:
        for i in range(count):
            log.add(start + i / count)

    second_of_sends(10.0, 178)
    for k in range(5):  # one event: a cluster
        learner.rejected(11.0 + k * 0.001, 11.01, clustered=True)
    assert learner.learned == Window(200, 1.0, "429s")
    second_of_sends(18.0, 170)  # 8 s later, again clearly fewer than 200
    learner.rejected(19.0, 19.01, clustered=True)
    assert learner.learned == Window(178, 1.0, "429s")  # the larger count the two saw


def test_two_refusals_at_clearly_fewer_sends_that_disagree_are_not_a_lower_limit() -> None:
    """Two stalls a few seconds apart each make a cluster of 429s at some count well under the
    limit, but not the same count; a lower limit repeats its count. 178 then 120: no lower
    limit; 120 then 125: 125."""
    from pipeline.transport.limit_learner import LimitLearner, SendLog, Window

    log = SendLog()
    learner = LimitLearner(log, list, lambda: None, initial_rps=4.0, margin=0.02)
    learner.learned = Window(200, 1.0, "429s")
    learner.changed_at = 0.0
    for start, count in ((10.0, 178), (14.0, 120), (18.0, 125)):
        for i in range(count):
            log.add(start + i / count)
        learner.rejected(start + 1.0, start + 1.01, clustered=True)
        if start < 18.0:
            assert learner.learned == Window(200, 1.0, "429s"), f"lowered at {start}"
    assert learner.learned == Window(125, 1.0, "429s")


def test_a_limit_that_drops_below_the_learned_one_is_followed_in_seconds() -> None:
    """Others start to share the quota: the server admits 30 a second where it admitted 50.
    The limiter learns the lower window from what the server let through (two events), not
    one step of strikes at a time (that would take minutes)."""

    out = run_virtual(limit_changes_at_20_s(50, 30, latency=0.5, total=50 * 20 + 30 * 40))
    first = out.server.admitted[0]
    after = [t for t in out.server.admitted if first + 30 <= t < first + 50]
    assert len(after) / 20 >= 0.9 * 30
    assert out.limiter.windows[-1].count <= 30


def test_a_send_just_before_the_refused_ones_second_counts_as_admitted() -> None:
    """The server judges arrivals: the ramp's first send left 0.8 ms more than a second before
    the refused one, but its connection's handshake made it arrive inside that second, so the
    server counted 20. Learning 19 cost 5% of the rate until the next try higher (seen on the
    strict server at R = 20 in three runs of four)."""
    from pipeline.transport.limit_learner import LimitLearner, SendLog, Window

    log = SendLog()
    learner = LimitLearner(log, list, lambda: None, initial_rps=4.0, margin=0.02)
    learner.start_ramp(0.0)
    for i in range(20):
        log.add(i * 0.05)
    refused_at = 1.0008
    learner.rejected(refused_at, refused_at + 0.001, clustered=False)
    assert learner.learned == Window(20, 1.0, "429s")


def test_at_most_one_send_beyond_the_second_counts_and_not_one_10_ms_beyond() -> None:
    """At 1,000 a second five sends lie within the 5 ms tolerance: one of them may have arrived
    inside the server's second, not all five. A send 10 ms older is outside, whatever the rate."""
    from pipeline.transport.limit_learner import SendLog

    dense = SendLog()
    for i in range(1010):  # 1,000 a second from t = 0
        dense.add(i * 0.001)
    refused_at = 1.0085  # its second holds the sends at 0.009-1.008: 1,000 of them
    assert dense.admitted_before(refused_at) == 1000 + 1  # and one of 0.004-0.008
    sparse = SendLog()
    sparse.add(0.0)
    for i in range(1, 20):
        sparse.add(0.01 + i * 0.05)
    assert sparse.admitted_before(1.01) == 19, "10 ms beyond the second: not counted"


def test_the_ramp_does_not_grow_through_a_pause() -> None:
    """While nothing is known, a clustered refusal with almost nothing admitted (an exhausted
    quota) pauses everyone for its Retry-After; the ramp must not wake at its ceiling after a
    minute and send the whole in-flight target at once."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(None, None, clock=loop.time)
        start = loop.time()
        sends: list[float] = []
        refused = 0

        async def request() -> None:
            nonlocal refused
            while True:
                async with limiter.slot() as ticket:
                    if refused < 3:  # the first three: 429 with Retry-After 60
                        refused += 1
                        wait = limiter.rejected(ticket, 60.0)
                    else:
                        sends.append(ticket.sent_at - start)
                        return
                await asyncio.sleep(wait)

        await asyncio.gather(*(request() for _ in range(40)))
        return sends

    sends = run_virtual(main())
    after = sorted(sends)
    assert after[0] >= 60.0
    assert sum(1 for t in after if t < after[0] + 0.5) <= 10, after[:20]
