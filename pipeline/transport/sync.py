"""The synchronous transport: one request per chunk, through the shared limiter and the retry
policy, to a backend (the Mistral HTTP protocol, or the local engine)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.backends.base import Backend, OCRResponse
from pipeline.models import Chunk
from pipeline.transport.ratelimit import RateLimiter
from pipeline.transport.retry import EndpointHealth, RetryPolicy, RetryStats, call_with_retry


@dataclass
class SyncTransport:
    backend: Backend
    limiter: RateLimiter
    policy: RetryPolicy
    health: EndpointHealth
    stats: RetryStats = field(default_factory=RetryStats)

    async def answer(self, chunk: Chunk) -> OCRResponse:
        return await call_with_retry(self.backend, chunk, self.limiter, self.policy, self.health,
                                     self.stats)

    def stop(self) -> None:
        """No request not yet sent may start (those in flight finish)."""
        self.limiter.close()

    @property
    def in_flight(self) -> int:
        return self.limiter.in_flight

    def demand(self) -> int:
        return self.limiter.demand()

    @property
    def bytes_sent(self) -> int:
        return self.backend.bytes_sent

    async def close(self) -> None:
        await self.backend.close()
