"""How a chunk gets its answer: the synchronous path (rate limiter, retry policy, HTTP backend)."""
