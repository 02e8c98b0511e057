"""What 429s teach the rate limiter: the server's window when nobody announces it, the ramp
while nothing is known, and the jitter margin (docs/rate-limits.md, "rps: auto").

`SendLog` is the record both sides read: the times of our sends the server has not refused.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline.transport.jitter_margin import MARGIN_MAX, JitterMargin

RAMP_DOUBLING = 0.25  # while nothing is known, the rate doubles every this many seconds
RAMP_MAX = 10_000.0
STRIKES = 3  # this many 429 events within STRIKE_SENDS sends at a known limit: it is one lower
STRIKE_SENDS = 300  # (over 1% of sends: more than jitter, which the margin absorbs)
STRIKE_SECONDS = 5  # ... or within this many seconds of sends at the known count, if more
PROBE_QUIET = 15.0  # a limit learned from 429s is tried 2% higher after this long without 429
PROBE_QUIET_MAX = 300.0
PROBE_VERDICT = 5.0  # a 429 for a send this soon after trying one higher: the try failed
EVENT_SECONDS = 1.0  # 429s within this of an event's first are the same event
LOW_CONFIRM_SECONDS = 10.0  # a second refusal at clearly fewer sends within this: a lower limit
LOW_AGREE = 0.1  # ... when the two counts of what the server admitted agree this closely
ARRIVAL_TOLERANCE = 0.005  # a send this much older than the window's start may still be in it


@dataclass(frozen=True)
class Window:
    """At most `count` sends in any `seconds` (the jitter margin is added when checked)."""

    count: int
    seconds: float
    source: str  # "configured" | "headers" | "429s"


class SendLog:
    """Our sends' times, oldest first, refused ones taken out; and how many were ever made."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.count = 0

    def add(self, now: float) -> None:
        self.times.append(now)
        self.count += 1

    def went_out(self, logged: float, on_wire: float) -> None:
        """A send logged at `logged` (when the pacer let it go) left at `on_wire`: keep that
        time instead, in order. A send pruned meanwhile (it waited seconds for a connection) is
        logged again: it reaches the server now. One refused meanwhile is not."""
        times = self.times
        for i in range(len(times) - 1, -1, -1):  # from the newest: it was sent just now
            if times[i] == logged:
                del times[i]
                break
            if times[i] < logged:
                return  # not in the log, though younger than its oldest: refused
        bisect.insort(times, on_wire)

    def refused(self, sent_at: float) -> None:
        """A refused request does not count at the server."""
        with contextlib.suppress(ValueError):
            self.times.remove(sent_at)

    def prune(self, now: float, keep: float) -> None:
        while self.times and self.times[0] < now - keep:
            self.times.popleft()

    def nth_last(self, n: int) -> float | None:
        return self.times[-n] if len(self.times) >= n else None

    def admitted_before(self, sent_at: float) -> int:
        """Our sends the server has not refused in the second before `sent_at`: its count.

        One send up to ARRIVAL_TOLERANCE older than that second is counted too: the server
        judges arrivals, and a request that left a millisecond before the window's start may
        arrive inside it (a new connection's handshake is enough). Missing it made the count
        one short: at R = 20, 5% of the rate lost until the next try higher. Only one, so that
        at hundreds a second (several sends within the tolerance) it is never more than one
        over."""
        start = sent_at - 1.0
        inside = sum(1 for t in self.times if start < t < sent_at)
        edge = any(start - ARRIVAL_TOLERANCE < t <= start for t in self.times)
        return inside + edge


class LimitLearner:
    """The limit learned from 429s, the ramp, and the jitter margin.

    `known()` gives every window in force besides the learned one (configured, announced);
    `on_change()` is called when the learned limit moves (the in-flight target moves with it).
    """

    def __init__(self, log: SendLog, known: Callable[[], Iterable[Window]],
                 on_change: Callable[[], None], *, initial_rps: float, margin: float) -> None:
        self.log = log
        self._known = known
        self._on_change = on_change
        self.initial_rps = initial_rps
        self.jitter = JitterMargin(margin)
        self.learned: Window | None = None
        self.ramp: float | None = None  # rate while nothing is known (auto mode)
        self._ramp_at = 0.0
        self.changed_at = -math.inf  # last change of the learned limit
        self._raised_at: float | None = None  # when the learned limit was last tried higher
        self._raised_from = 0  # ... and from which count
        self._probe_quiet = PROBE_QUIET
        self.last_429 = -math.inf
        self._last_event_429 = -math.inf  # the first 429 of the last event counted as a strike
        self._strikes: deque[int] = deque()  # send numbers of recent 429s at a known limit
        self._low_event: tuple[float, int] | None = None  # a refusal at clearly fewer sends

    @property
    def margin(self) -> float:
        """The jitter margin added to every window now (s)."""
        return self.jitter.value

    def windows(self) -> list[Window]:
        found = list(self._known())
        if self.learned is not None:
            found.append(self.learned)
        return found

    # ---- the ramp -----------------------------------------------------------------------------
    def start_ramp(self, now: float) -> None:
        self.ramp = self.initial_rps
        self._ramp_at = now

    def hold_ramp(self, until: float) -> None:
        """Everyone is paused until `until`: the ramp does not grow meanwhile (after a minute's
        Retry-After it would wake at its ceiling and send the whole in-flight target at once)."""
        self._ramp_at = max(self._ramp_at, until)

    def stop_ramp(self) -> None:
        """A limit is known (announced): the ramp has no more say."""
        self.ramp = None

    # ---- as sends go --------------------------------------------------------------------------
    def grow(self, now: float, limited: bool) -> None:
        """Let the ramp grow while callers queue for it; decay the jitter margin when quiet;
        try a limit learned from 429s one higher after a quiet while."""
        if self.ramp is not None and not self.windows():
            if limited:
                grown = max(0.0, now - self._ramp_at) / RAMP_DOUBLING
                self.ramp = min(RAMP_MAX, self.ramp * 2 ** grown)
            self._ramp_at = max(self._ramp_at, now)
        self.jitter.tick(self.log.count)
        learned = self.learned
        if learned is not None and limited and \
                now - max(self.last_429, self.changed_at) > self._probe_quiet:
            self._set_learned(learned.count + max(1, learned.count // 50), now)  # +2%
            self._raised_at = now
            self._raised_from = learned.count

    def _set_learned(self, count: int, now: float) -> None:
        self.learned = Window(max(1, count), 1.0, "429s")
        self.ramp = None
        self.changed_at = now
        self._raised_at = None
        self._low_event = None  # a count seen under another limit says nothing of this one
        self._on_change()

    # ---- what a 429 teaches -------------------------------------------------------------------
    def rejected(self, sent_at: float, now: float, clustered: bool) -> None:
        """A 429 for a request sent at `sent_at` (its send already out of the log)."""
        if sent_at >= self.changed_at:  # not a verdict on an older, higher limit
            self._learn(sent_at, now, clustered)
        self.last_429 = now

    def _learn(self, sent_at: float, now: float, clustered: bool) -> None:
        raised = self._raised_at
        if self.learned is not None and raised is not None and \
                raised <= sent_at < raised + PROBE_VERDICT:
            # The try higher failed: back to the count that held, try again later.
            self._set_learned(self._raised_from, now)
            self._probe_quiet = min(PROBE_QUIET_MAX, self._probe_quiet * 2)
            return
        windows = self.windows()
        admitted = self.log.admitted_before(sent_at)
        per_second = [w.count for w in windows if w.seconds <= 1.0]
        if not per_second:  # no per-second limit known (none, or per minute only)
            if admitted >= 2:
                self._set_learned(admitted, now)  # the server's window: what it let through
            elif not windows and self.ramp is not None:
                self.ramp = max(0.2, self.ramp / 2)
                self._ramp_at = now
            return
        # A refusal at a known count: the margin's business. Not the ones above: the ramp's
        # overshoot (a score of 429s for sends made before the limit was learned) once widened
        # the margin to 80 ms at every event of the next 5 s, and it took a minute to narrow;
        # a failed try higher is the try's business.
        self.jitter.refused(self.log.count)
        if admitted >= 2 and admitted < 0.9 * min(per_second) - 1 and (
                clustered or admitted >= 0.5 * min(per_second)):
            # Refused while we had sent clearly fewer: the server's window holds what it let
            # through (a limit below ours, or others sharing the quota). One refusal after a
            # quiet spell is not enough to say so; a cluster is, when a second event says it
            # again (`_low_again`).
            confirmed = self._low_again(now, admitted)
            if confirmed is not None:
                self._set_learned(confirmed, now)
                self.jitter.explained()  # the refusals taught this limit; not jitter
                return
        if now - self._last_event_429 <= EVENT_SECONDS:
            return  # the same event (a late, bunched burst): one margin step and strike each
        self._strike(now, min(per_second))

    def _low_again(self, now: float, admitted: int) -> int | None:
        """The server's count when this refusal at clearly fewer sends repeats an earlier
        event's (within LOW_CONFIRM_SECONDS, counts within LOW_AGREE); None while unconfirmed.

        Why two: a loop stalled by a full garbage collection sends the requests it logged
        before the stall together with the ones after, so once the server's second can hold
        more than our log says (at R = 200 that took the limit to 178 for good). A lower limit
        repeats its count, the stalls of a busy loop do not."""
        low = self._low_event
        if low is not None and now - low[0] <= EVENT_SECONDS:
            return None  # the same event's 429s
        if low is not None and now - low[0] <= LOW_CONFIRM_SECONDS and \
                abs(admitted - low[1]) <= LOW_AGREE * max(admitted, low[1]):
            return max(admitted, low[1])
        self._low_event = (now, admitted)
        return None

    def _strike(self, now: float, count: int) -> None:
        """One 429 event at the known per-second `count`: the margin widens when refusals are
        more than a small share of recent sends (`JitterMargin`); when strikes may lower it
        (`count` is a learned guess, or the margin is at its widest), three events within the
        strike span say the server's window is one fewer.

        A configured or announced count is not lowered this way while the margin can still
        widen (it narrows again, a lowered count needs a quiet 15 s to come back). At R = 200,
        L = 8 s the stalls of a busy 2-core machine made an event every 1-5 s; as strikes they
        took a configured 200 to 196 within a minute, and the quiet never came. A server that
        enforces less than the count still gets its way: the margin widens while the refusals
        go on (up to 0.2 s, 17% below at high rates), a clearly lower limit is learned
        (`_low_again`), and with the margin at its widest strikes lower the count too (at small
        counts 0.2 s slows little: 8.3 a second at 10)."""
        # Timed from the event's first 429, not the latest: 429s that never stop for a whole
        # second are a new event each second (they would otherwise never add up to a strike).
        self._last_event_429 = now
        sends = self.log.count
        guessed = self.learned is not None and self.learned.count <= count
        # A margin at its widest no longer slows a small count enough (at 10 a second 0.2 s
        # is 8.3 a second: a server that admits 8 would refuse for good): then strikes lower
        # even a configured or announced count, and the try higher brings it back.
        lower = guessed or self.jitter.value >= MARGIN_MAX  # before this event widens it
        self.jitter.event(sends, count)
        if not lower:
            return
        self._strikes.append(sends)
        # Events are at most one a second, so at a high rate 300 sends are too few to hold
        # three: the window is also at least STRIKE_SECONDS of sends at the known count.
        span = max(STRIKE_SENDS, STRIKE_SECONDS * count)
        while self._strikes and self._strikes[0] < sends - span:
            self._strikes.popleft()
        if len(self._strikes) >= STRIKES:
            self._strikes.clear()
            self._set_learned(count - 1, now)
            if not guessed:
                # A configured or announced count lowered with the margin at its widest: the
                # refusals were the lower limit, and the width they gave goes with them. (Not
                # for a learned guess: there jitter strikes too, and resetting the margin at
                # each strike took R = 10 at 50 ms of jitter from 0.949 to 0.883.)
                self.jitter.explained()
