"""The fake server's rate limit: a token bucket, plus the per-minute headers Mistral sends."""

from __future__ import annotations

import email.utils
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait: float  # seconds until a token is free (0 when allowed)


class RateLimiter:
    """Token bucket: `rate` tokens per second, capacity max(1, rate), starting full.

    Rejected requests do not consume a token. Admissions of the last 60 s are kept only to
    fill `x-ratelimit-remaining-req-minute`.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
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
        if not self.enabled:
            return Decision(True, 0.0)
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._admitted.append(now)
            return Decision(True, 0.0)
        return Decision(False, (1.0 - self._tokens) / self.rate)

    def minute_headers(self) -> dict[str, str]:
        """`x-ratelimit-*-req-minute` headers, empty when there is no limit."""
        if not self.enabled:
            return {}
        now = self._clock()
        while self._admitted and self._admitted[0] <= now - 60.0:
            self._admitted.popleft()
        limit = max(1, round(self.rate * 60))
        return {
            "x-ratelimit-limit-req-minute": str(limit),
            "x-ratelimit-remaining-req-minute": str(max(0, limit - len(self._admitted))),
        }


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
    return {"Retry-After": str(seconds), "retry-after-ms": str(max(0, round(exact * 1000)))}
