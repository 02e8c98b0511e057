"""The jitter margin (pipeline/transport/jitter_margin.py) and what 429s at a configured or
announced count may change: the margin, never the count."""

from __future__ import annotations

import asyncio

from pipeline.transport.jitter_margin import DECAY_SENDS, MARGIN_STEP, JitterMargin
from pipeline.transport.limit_learner import LimitLearner, SendLog, Window
from pipeline.transport.ratelimit import RateLimiter
from tests.virtual_loop import run_virtual


def refuse_in_events(margin: JitterMargin, *, per_event: int, every: int, events: int,
                     per_second: int) -> list[float]:
    """`events` 429 events `every` sends apart, each of `per_event` refusals; the margin after
    each event."""
    values = []
    sends = 0
    for _ in range(events):
        sends += every
        for k in range(per_event):
            margin.refused(sends + k)
            if k == 0:
                margin.event(sends, per_second)
        margin.tick(sends + per_event)
        values.append(margin.value)
    return values


def test_at_200_a_second_many_429s_per_event_widen_it_though_events_are_a_second_apart() -> None:
    """Events are counted once a second: at R = 200 two are ~200 sends apart, so a rule on how
    close events come never widened the margin. The share of sends refused does: 5 429s an
    event, an event a second, is 2.5 per 100 sends."""
    margin = JitterMargin(0.01)
    values = refuse_in_events(margin, per_event=5, every=200, events=10, per_second=200)
    assert values[-1] >= 0.01 + 5 * MARGIN_STEP - 1e-9


def test_a_stall_now_and_then_leaves_it_alone() -> None:
    """One 429 every 3 s at R = 200 (0.17 per 100 sends) is cheaper than 1% of the rate for
    good: the margin neither widens nor needs to narrow."""
    margin = JitterMargin(0.01)
    values = refuse_in_events(margin, per_event=1, every=600, events=20, per_second=200)
    assert max(values) == 0.01


def test_at_10_a_second_two_events_close_together_widen_it() -> None:
    """At low rates the span is 200 sends: a 429 that follows another within 200 sends widens,
    as before."""
    margin = JitterMargin(0.02)
    margin.refused(100)
    assert not margin.event(100, 10)
    margin.refused(250)
    assert margin.event(250, 10)
    assert margin.value == 0.03


def test_it_narrows_after_quiet_sends_down_to_its_base() -> None:
    """Half a step per DECAY_SENDS sends with at most one 429, never under the base."""
    margin = JitterMargin(0.01)
    refuse_in_events(margin, per_event=5, every=200, events=6, per_second=200)
    widened = margin.value
    assert widened > 0.01
    sends = 6 * 200  # the last widening
    margin.tick(sends + DECAY_SENDS - 1)
    assert margin.value == widened, "not before DECAY_SENDS sends since it widened"
    for k in range(1, 40):
        margin.tick(sends + k * DECAY_SENDS)
    assert margin.value == 0.01


def refuse_every_other_second(log: SendLog, learner: LimitLearner, seconds: int) -> None:
    """197 sends a second, and every other second a 429 for the last of them."""
    for second in range(seconds):
        for i in range(197):
            log.add(second + i / 197)
        if second % 2 == 0:
            t = second + 0.999
            learner.rejected(t, t + 0.01, clustered=False)


def test_429_events_at_a_configured_count_never_lower_it() -> None:
    """Three events within five seconds at a configured 200 (the stalls of a busy machine):
    the count stays 200 (strikes lowered it to 199, then 198, ... and it never came back)."""
    log = SendLog()
    learner = LimitLearner(log, lambda: [Window(200, 1.0, "configured")], lambda: None,
                           initial_rps=4.0, margin=0.01)
    refuse_every_other_second(log, learner, seconds=12)
    assert learner.learned is None
    assert [w.count for w in learner.windows()] == [200]


def test_429_events_at_a_learned_count_still_lower_it() -> None:
    """The same events at a count learned from 429s: that count was a guess, one fewer."""
    log = SendLog()
    learner = LimitLearner(log, list, lambda: None, initial_rps=4.0, margin=0.01)
    learner.learned = Window(200, 1.0, "429s")
    learner.changed_at = 0.0
    refuse_every_other_second(log, learner, seconds=6)
    assert learner.learned == Window(199, 1.0, "429s")


def test_a_configured_rate_above_what_the_server_enforces_settles_under_it() -> None:
    """`rps: 20` against a server that admits 18 a second (others share the quota, 10% off:
    too close for a lower limit to be learned from one cluster). The margin widens until the
    429s stop; the server is never asked for more than it allows for long."""
    from tests.test_limiter import simulate, steady_rate

    out = simulate(20, 18, 1.0, 3000)
    assert steady_rate(out.server.admitted, 20) >= 0.95 * 18
    assert out.rejected_per_100 <= 1.0
    assert out.limiter.rate <= 18.2


def test_a_hard_cap_under_arrival_jitter_keeps_its_rate_and_few_429s() -> None:
    """`rps: 200` at the server's limit, sends arriving up to 50 ms late (virtual time): the
    margin widens to what the jitter needs (0.971 of R and a count walked down to 196 before)."""
    from tests.test_limiter import simulate, steady_rate

    out = simulate(200, 200, 2.0, 20_000, jitter=0.05)
    assert steady_rate(out.server.admitted, 20) >= 0.97 * 200
    assert out.rejected_per_100 <= 0.5
    assert [w.count for w in out.limiter.windows] == [200]


def test_the_limiter_reports_the_margin_it_runs_at() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter(200, None, clock=loop.time)
        return limiter.margin

    assert run_virtual(main()) == 0.01


def test_the_ramps_overshoot_does_not_widen_the_margin() -> None:
    """Auto mode without headers: the ramp overshoots and a score of 429s come back for sends
    made before the limit was known. They teach the limit; they are not jitter, and a 429 at
    the learned count a second later leaves the margin as it was (they once widened it to
    80 ms, a minute to narrow again)."""
    log = SendLog()
    learner = LimitLearner(log, list, lambda: None, initial_rps=4.0, margin=0.02)
    learner.start_ramp(0.0)
    sends = [1.0 + i / 220 for i in range(220)]
    for t in sends:
        log.add(t)
    for t in sends[200:]:
        log.refused(t)
        learner.rejected(t, 2.01, clustered=True)
    assert learner.learned is not None
    for i in range(195):
        log.add(2.5 + i / 195)
    learner.rejected(3.49, 3.5, clustered=False)
    assert learner.margin == 0.02


def test_at_2000_a_second_a_steady_2_percent_refused_keeps_widening_it() -> None:
    """The span is 5 s of sends (10,000 at R = 2,000): narrowing's pruning to 1,000 sends once
    cut it, and 2-3% refused never widened the margin past its first step."""
    margin = JitterMargin(0.01)
    sends = 0
    for _ in range(20):  # an event a second, 40 of its 2,000 sends refused
        sends += 2000
        for k in range(40):
            margin.refused(sends + 50 * k)
            if k == 0:
                margin.event(sends, 2000)
            margin.tick(sends + 50 * k)
    assert margin.value >= 0.01 + 10 * MARGIN_STEP - 1e-9


def test_a_configured_rate_a_fifth_above_a_small_server_limit_is_lowered_to_it() -> None:
    """`rps: 10` against a server that admits 8: a margin of 0.2 s slows 10 a second only to
    8.3, so once it is at its widest the strikes lower the count (it kept 10, with 15 429s
    per 100, while only the margin answered)."""
    from tests.test_limiter import simulate, steady_rate

    out = simulate(10, 8, 1.0, 3000)
    assert out.rejected_per_100 <= 2.5
    assert steady_rate(out.server.admitted, 60) >= 0.95 * 8
    assert min(w.count for w in out.limiter.windows) == 8
    assert out.limiter.margin < 0.05, "the width the refusals gave it went with them"
