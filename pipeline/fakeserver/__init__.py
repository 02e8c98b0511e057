"""A fake Mistral OCR server on loopback, with injectable latency, rate limits and faults.

Part of the product: users test their configs against it, the tests and benchmarks use it.
"""

from pipeline.fakeserver.cli import main
from pipeline.fakeserver.options import FakeServerOptions
from pipeline.fakeserver.server import FakeServer, start_fake_server
from pipeline.fakeserver.stats import Stats

__all__ = ["FakeServer", "FakeServerOptions", "Stats", "main", "start_fake_server"]
