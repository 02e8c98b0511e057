"""How long an admitted request takes: a seedable draw from the configured distribution, plus
a per-page part, plus the stuck-request delay. Waiting is `asyncio.sleep`: never the event loop."""

from __future__ import annotations

import math
import random

from pipeline.fakeserver.options import LOGNORMAL_DEFAULT_CAP, FakeServerOptions


class LatencyModel:
    """Draws service times. Its own random generator (seeded from `options.seed`), so the
    latencies of a benchmark repeat whatever the faults draw."""

    def __init__(self, options: FakeServerOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)

    def base(self) -> float:
        """One draw of the per-request latency, in seconds."""
        o = self.options
        if o.latency_distribution == "uniform":
            assert o.latency_max is not None
            return self.rng.uniform(o.latency, o.latency_max)
        if o.latency_distribution == "lognormal":
            cap = o.latency_max if o.latency_max is not None else LOGNORMAL_DEFAULT_CAP * o.latency
            # median of lognormvariate(mu, sigma) is exp(mu)
            return min(cap, self.rng.lognormvariate(math.log(o.latency), o.latency_sigma))
        return o.latency

    def service_time(self, pages: int, stuck: bool = False) -> float:
        """Seconds an admitted request of `pages` pages takes before its answer."""
        delay = self.base() + self.options.latency_per_page * pages
        if stuck:
            delay += self.options.stuck_seconds
        return delay
