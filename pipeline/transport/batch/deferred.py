"""The signal a batch transport gives the document job: this chunk's answer comes later."""

from __future__ import annotations

from pipeline.errors import StopRequested


class ChunkDeferred(StopRequested):
    """The chunk is submitted to a batch job (now, or by an earlier run): its answer will be
    checkpointed when the job's results are collected, maybe by a later run. The document goes
    back to pending, like a stop, with nothing lost."""
