"""The fake server's rate limits and the headers that go with them.

Two modes:
- `token-bucket` (lenient, the historical default): R tokens per second, capacity max(1, R),
  so a full bucket admits a burst of R at once and then R per second.
- `sliding-window` (strict, like real gateways): at most R admissions in ANY sliding 1-second
  window and, optionally, at most M in any sliding 60-second window. Exact: a request arriving
  at `now` is admitted iff fewer than R admissions lie in (now - 1, now] (and fewer than M in
  (now - 60, now]). Rejected requests are not counted.

Both answer the same `Decision` and both can describe themselves with Mistral's
`x-ratelimit-*-req-minute` headers.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

TOKEN_BUCKET = "token-bucket"
SLIDING_WINDOW = "sliding-window"
RATE_LIMIT_MODES: frozenset[str] = frozenset({TOKEN_BUCKET, SLIDING_WINDOW})

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait: float  # seconds until a request would be admitted (0 when allowed)
    at: float  # the clock reading the decision was made at


class Limiter(Protocol):
    @property
    def enabled(self) -> bool: ...

    def acquire(self) -> Decision: ...

    def reset(self) -> None: ...

    def minute_headers(self) -> dict[str, str]: ...


def _drop_before(times: deque[float], horizon: float) -> None:
    """Forget admissions at or before `horizon` (they left the half-open window)."""
    while times and times[0] <= horizon:
        times.popleft()


class RateLimiter:
    """Token bucket: `rate` tokens per second, capacity max(1, rate), starting full.

    Rejected requests do not consume a token. Admissions of the last 60 s are kept only to
    fill `x-ratelimit-remaining-req-minute`.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._admitted: deque[float] = deque()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def reset(self) -> None:
        self._tokens = self.capacity
        self._last = self._clock()
        self._admitted.clear()

    def acquire(self) -> Decision:
        now = self._clock()
        if not self.enabled:
            return Decision(True, 0.0, now)
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._admitted.append(now)
            return Decision(True, 0.0, now)
        return Decision(False, (1.0 - self._tokens) / self.rate, now)

    def minute_headers(self) -> dict[str, str]:
        """`x-ratelimit-*-req-minute` headers, empty when there is no limit."""
        if not self.enabled:
            return {}
        _drop_before(self._admitted, self._clock() - 60.0)
        limit = max(1, round(self.rate * 60))
        return {
            "x-ratelimit-limit-req-minute": str(limit),
            "x-ratelimit-remaining-req-minute": str(max(0, limit - len(self._admitted))),
        }


class SlidingWindowLimiter:
    """At most `per_second` admissions in any sliding 1 s window, and at most `per_minute`
    (when set) in any sliding 60 s window; judged at arrival, rejected requests not counted.

    A 429's wait is the time until the oldest admission of the full window leaves it.
    """

    def __init__(self, per_second: int, per_minute: int | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.per_second = per_second
        self.per_minute = per_minute
        self._clock = clock
        self._second: deque[float] = deque()
        self._minute: deque[float] = deque()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0 or self.per_minute is not None

    @property
    def minute_limit(self) -> int:
        """What the headers announce: the per-minute limit, else 60 x the per-second one."""
        return self.per_minute if self.per_minute is not None else 60 * self.per_second

    def reset(self) -> None:
        self._second.clear()
        self._minute.clear()

    def acquire(self) -> Decision:
        now = self._clock()
        if not self.enabled:
            return Decision(True, 0.0, now)
        _drop_before(self._second, now - 1.0)
        _drop_before(self._minute, now - 60.0)
        wait = 0.0
        if self.per_second > 0 and len(self._second) >= self.per_second:
            wait = max(wait, self._second[-self.per_second] + 1.0 - now)
        if self.per_minute is not None and len(self._minute) >= self.per_minute:
            wait = max(wait, self._minute[-self.per_minute] + 60.0 - now)
        if wait > 0:
            return Decision(False, wait, now)
        self._second.append(now)
        self._minute.append(now)
        return Decision(True, 0.0, now)

    def minute_headers(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        _drop_before(self._minute, self._clock() - 60.0)
        limit = self.minute_limit
        return {
            "x-ratelimit-limit-req-minute": str(limit),
            "x-ratelimit-remaining-req-minute": str(max(0, limit - len(self._minute))),
        }


def make_limiter(mode: str, rps: float, per_minute: int | None,
                 clock: Clock = time.monotonic) -> Limiter:
    """The limiter for a mode: `rps` 0 means no per-second limit."""
    if mode == SLIDING_WINDOW:
        return SlidingWindowLimiter(math.floor(rps), per_minute, clock)
    return RateLimiter(rps, clock)


def retry_after_headers(
    wait: float, override: float | None, style: str = "both", now: float | None = None
) -> dict[str, str]:
    """Retry-After in whole seconds (at least 1 unless overridden) and the exact retry-after-ms.

    An override is sent as given, rounded up to whole seconds (0 stays 0) so tests can ask
    for an immediate retry; `retry-after-ms` always carries the precise value.
    `style` "seconds" sends Retry-After alone; "http-date" sends Retry-After alone as an HTTP
    date, rounded up to the next whole second so that it never asks for less than the wait.
    """
    if override is not None:
        seconds, exact = math.ceil(override), override
    else:
        seconds, exact = max(1, math.ceil(wait)), wait
    if style == "http-date":
        when = math.ceil((time.time() if now is None else now) + seconds)
        return {"Retry-After": email.utils.formatdate(when, usegmt=True)}
    if style == "seconds":
        return {"Retry-After": str(seconds)}
    return {"Retry-After": str(seconds), "retry-after-ms": str(max(0, math.ceil(exact * 1000)))}
