"""The jitter margin: the slack added to every rate window, widened by the share of our sends
the server refuses and narrowed again when refusals stop (docs/rate-limits.md).

Sends spaced for N a second reach a strict sliding-window server up to d seconds late, so two
of them can arrive d closer than they left; a window then holds N + 1 unless the spacing leaves
about d of slack. The margin is that slack. It is driven by the SHARE of sends refused over the
last few seconds, not by how close together two refusals come: 429 events are counted once a
second, so at R = 200 two of them were never fewer than 200 sends apart and a rule of "two
events within 200 sends" never widened the margin however many 429s each event held (once 429s
no longer lowered a configured count, it let 1.2 per 100 requests through at R = 200 with
50 ms of jitter, on virtual time; 0.25-0.29 with this rule). Between the share that widens it
and the quiet that narrows it lies a band where it stays put: a stall now and then costs a few
429s, which is cheaper than 1% of the rate for good.
"""

from __future__ import annotations

from collections import deque

MARGIN_STEP = 0.01  # seconds added to the margin per widening ...
MARGIN_MAX = 0.2
SPAN_SENDS = 200  # ... judged over the last max(SPAN_SENDS, SPAN_SECONDS x the rate) sends
SPAN_SECONDS = 5.0
WIDEN_SHARE = 0.003  # more refusals than this share of those sends (before this one): widen
DECAY_SENDS = 1000  # this many sends since the last change with at most QUIET refusals ...
QUIET = 1
DECAY_STEP = MARGIN_STEP / 2  # ... narrow it by this much


class JitterMargin:
    """`value` is the margin now (s); `base` the one it starts with and never goes under."""

    def __init__(self, base: float) -> None:
        self.base = base
        self.value = base
        self._refusals: deque[int] = deque()  # the send count at each 429, oldest first
        self._changed_at = 0  # the send count at the last widening or narrowing
        self._span: float = SPAN_SENDS  # the widening span of the last event (sends)

    def refused(self, sends: int) -> None:
        """One 429 (call it before `event` when the 429 starts an event)."""
        self._refusals.append(sends)

    def event(self, sends: int, per_second: int) -> bool:
        """A 429 event at a known `per_second` count: widen when the refusals before it are
        more than WIDEN_SHARE of the span's sends. Returns whether it widened."""
        span = self._span = max(SPAN_SENDS, SPAN_SECONDS * per_second)
        self._prune(sends)
        before = self._since(sends - span) - 1  # not this one
        if before > WIDEN_SHARE * span and self.value < MARGIN_MAX:
            self.value = min(MARGIN_MAX, self.value + MARGIN_STEP)
            self._changed_at = sends
            return True
        return False

    def tick(self, sends: int) -> None:
        """As sends go: narrow after DECAY_SENDS sends with at most QUIET refusals."""
        if self.value <= self.base or sends - self._changed_at < DECAY_SENDS:
            return
        self._prune(sends)
        if self._since(sends - DECAY_SENDS) <= QUIET:
            self.value = max(self.base, self.value - DECAY_STEP)
            self._changed_at = sends

    def explained(self) -> None:
        """The refusals so far taught a lower limit: they were not jitter, and the width they
        gave the margin goes with them (at rps 5 against a server of 4 it kept the pace at 3.4
        for minutes after the count was 4)."""
        self._refusals.clear()
        self.value = self.base

    def _since(self, after: float) -> int:
        """Refusals made after send number `after`."""
        return sum(1 for s in self._refusals if s > after)

    def _prune(self, sends: int) -> None:
        """Keep what either rule looks at (pruning to DECAY_SENDS alone once cut the widening
        span at 1,000 a second and more: 3% refused at R = 2,000 never widened it)."""
        horizon = sends - max(self._span, DECAY_SENDS)
        while self._refusals and self._refusals[0] <= horizon:
            self._refusals.popleft()
