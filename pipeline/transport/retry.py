"""The retry policy: tenacity around one OCR call, through the shared rate limiter.

- Transient failures (408, 5xx, connection trouble, malformed answers) are retried with
  exponential backoff and full jitter, up to `retry_attempts` tries per chunk.
- 429s are not failures of the document: they are retried without spending the chunk's tries,
  so a long 429 storm is waited out. A stray 429 makes only its own request wait its
  Retry-After; 429s that cluster make the limiter pause every request (docs/rate-limits.md).
- When the service has failed continuously for longer than `endpoint_deadline`, the run stops
  (FatalError, exit 3) instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from pipeline.backends.base import Backend, OCRResponse, check_response
from pipeline.errors import FatalError, RejectedError, RetryableError
from pipeline.models import Chunk
from pipeline.transport import on_wire
from pipeline.transport.ratelimit import RateLimiter

# Statuses that, when every request so far got them, mean the configuration is wrong (endpoint
# path, model name, a request option the deployment does not know), not the documents.
CONFIG_STATUSES = {404, 405, 422}
CONFIG_BREAKER = 5


class EndpointHealth:
    """How long has the service been failing? Past the deadline, every call is fatal.

    Also stops the run when nothing but 429s came back for `throttle_deadline` (an exhausted
    quota never recovers by waiting), and when the first requests were all refused with the
    same 404/405/422 (a configuration error, not bad documents).
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic,
                 throttle_deadline: float = 3600.0) -> None:
        self.deadline = deadline
        self.throttle_deadline = throttle_deadline
        self._clock = clock
        self.failing_since: float | None = None
        self.throttled_since: float | None = None
        self.successes = 0
        self.rejections: dict[int, int] = {}

    def ok(self) -> None:
        self.failing_since = None
        self.throttled_since = None
        self.successes += 1

    def throttled(self) -> None:
        now = self._clock()
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > self.throttle_deadline:
            raise FatalError(
                f"the OCR service has answered only 429 (rate limited) for"
                f" {now - self.throttled_since:.0f} s (throttle_deadline"
                f" {self.throttle_deadline:g} s)",
                hint="check the account's quota and rate limit; the run is resumable",
            )

    def rejected(self, error: RejectedError) -> None:
        if self.successes or error.status not in CONFIG_STATUSES:
            return
        self.rejections[error.status] = self.rejections.get(error.status, 0) + 1
        if self.rejections[error.status] >= CONFIG_BREAKER:
            raise FatalError(
                f"the first {CONFIG_BREAKER} requests were all refused with HTTP {error.status}"
                f" and none succeeded; last: {error.message}",
                hint="check the endpoint URL, the model name and extra_request options",
            )

    def failed(self, error: RetryableError) -> None:
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.deadline:
            raise FatalError(
                f"the OCR service has been failing for {now - self.failing_since:.0f} s"
                f" (deadline {self.deadline:g} s); last error: {error.message}",
                hint="check the endpoint and the service status; the run is resumable",
            )


@dataclass
class RetryStats:
    attempts: int = 0
    retries: int = 0
    throttled: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def count(self, status: str) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


@dataclass
class RetryPolicy:
    attempts: int
    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2^(n-1))], at least 50 ms."""
        cap = min(self.maximum, self.initial * (2 ** max(failures - 1, 0)))
        return max(0.05, self.rng.uniform(0, cap))


class _Call:
    """One chunk's tries: what they share (the count of failures, the last 429's wait).

    A plain object rather than closures: it lives as long as the request (seconds), and at
    hundreds of requests a second every object that does is scanned by the garbage collector
    again and again (closures are a function and a cell per captured name)."""

    __slots__ = ("backend", "chunk", "limiter", "policy", "health", "stats", "failures",
                 "throttle_wait")

    def __init__(self, backend: Backend, chunk: Chunk, limiter: RateLimiter,
                 policy: RetryPolicy, health: EndpointHealth, stats: RetryStats) -> None:
        self.backend, self.chunk, self.limiter = backend, chunk, limiter
        self.policy, self.health, self.stats = policy, health, stats
        self.failures = 0
        self.throttle_wait = 0.0  # what the limiter said the last 429'd request should wait

    async def one_try(self) -> OCRResponse:
        stats, health = self.stats, self.health
        async with self.limiter.slot() as ticket:
            stats.attempts += 1
            try:
                with on_wire.telling(functools.partial(self.limiter.went_out, ticket)):
                    response = check_response(self.chunk, await self.backend.ocr(self.chunk))
            except RetryableError as exc:
                stats.count(str(exc.status) if exc.status else "error")
                if exc.status == 429:
                    stats.throttled += 1
                    self.throttle_wait = self.limiter.rejected(ticket, exc.retry_after)
                    health.throttled()
                else:
                    self.failures += 1
                    health.failed(exc)
                raise
            except FatalError:
                stats.count("fatal")
                raise
            except RejectedError as exc:
                stats.count(str(exc.status) if exc.status else "rejected")
                health.rejected(exc)
                raise
        stats.count("200")
        health.ok()
        return response

    def out_of_tries(self, state: RetryCallState | None = None) -> bool:
        return self.failures >= self.policy.attempts

    def wait_after(self, exc: BaseException | None) -> float:
        if isinstance(exc, RetryableError) and exc.status == 429:
            return self.throttle_wait
        return self.policy.backoff(self.failures)

    def wait(self, state: RetryCallState) -> float:
        return self.wait_after(state.outcome.exception() if state.outcome else None)


async def call_with_retry(
    backend: Backend,
    chunk: Chunk,
    limiter: RateLimiter,
    policy: RetryPolicy,
    health: EndpointHealth,
    stats: RetryStats,
) -> OCRResponse:
    """One chunk's OCR answer, checked, after as many tries as the policy allows.

    The first try is made directly; tenacity's retry loop is built only once a try has failed.
    Why: a tenacity loop is some forty objects in reference cycles that live as long as the
    request (seconds), so at hundreds of requests a second they filled the oldest GC
    generation and its full collections (0.1-0.3 s, every few seconds) stalled the sends.
    """
    call = _Call(backend, chunk, limiter, policy, health, stats)
    try:
        return await call.one_try()
    except RetryableError as exc:
        if call.out_of_tries():
            raise
        first_wait = call.wait_after(exc)
    await asyncio.sleep(first_wait)
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RetryableError), stop=call.out_of_tries, wait=call.wait,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            stats.retries += 1
            return await call.one_try()
    raise AssertionError("unreachable: tenacity either returns or re-raises")
