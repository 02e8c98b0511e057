"""While the pool works: the progress display and the metrics file, refreshed on a timer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import FatalError
from pipeline.manifest import Manifest
from pipeline.manifest.writer import AsyncManifest
from pipeline.run.metrics import MetricsSnapshot, write_metrics
from pipeline.run.progress import ProgressDisplay, ProgressSnapshot
from pipeline.run.report import RunReport
from pipeline.transport.ratelimit import LimiterSnapshot
from pipeline.transport.retry import RetryStats


class RunTicker:
    """Renders the run's figures; owns no state of the run (it reads the report and stats)."""

    def __init__(self, report: RunReport, stats: Callable[[], RetryStats], progress: ProgressDisplay,
                 metrics_path: Path, interval: float, log: Any,
                 bytes_sent: Callable[[], int]) -> None:
        self.report = report
        self.stats = stats
        self.progress = progress
        self.metrics_path = metrics_path
        self.interval = interval
        self.log = log
        self.bytes_sent = bytes_sent
        self.started = time.time()
        self.documents_total = 0
        self.unchanged = 0
        self.last_success: float | None = None
        self.manifest_counts: dict[str, int] = {}
        self.endpoints: Callable[[], dict[str, dict[str, Any]]] = dict
        # The local engine's workers now (a Dask cluster's, with --cluster); None: not shown.
        self.workers: Callable[[], int | None] = lambda: None
        # The rate limiter of a single hosted endpoint (pace, in flight, latency); None: none.
        self.limiter: Callable[[], LimiterSnapshot | None] = lambda: None

    def progress_snapshot(self) -> ProgressSnapshot:
        r = self.report
        return ProgressSnapshot(
            documents_total=self.documents_total,
            documents_done=r.documents_done,
            documents_failed=r.documents_failed,
            pages_done=r.pages_done,
            retries=self.stats().retries,
            throttled=self.stats().throttled,
            elapsed_s=time.time() - self.started,
            workers=self._sample_workers(),
            limiter=self.limiter(),
        )

    def _sample_workers(self) -> int | None:
        """Workers now; the report keeps the most seen during the run."""
        workers = self.workers()
        if workers is not None:
            self.report.workers = max(self.report.workers or 0, workers)
        return workers

    def metrics_snapshot(self, *, in_progress: bool) -> MetricsSnapshot:
        r = self.report
        stats = self.stats()
        return MetricsSnapshot(
            documents={
                "done": r.documents_done,
                "failed": r.documents_failed,
                "interrupted": r.documents_interrupted,
                "unchanged": self.unchanged,
                "todo": self.documents_total,
            },
            pages={"done": r.pages_done, "from_checkpoint": r.pages_from_checkpoints},
            requests_by_status=dict(stats.by_status),
            retries=stats.retries,
            throttled=stats.throttled,
            bytes_sent=self.bytes_sent(),
            cost=round(r.cost, 6),
            duration_s=round(time.time() - self.started, 3),
            in_progress=in_progress,
            exit_code=None if in_progress else r.exit_code,
            last_success=self.last_success,
            manifest_documents={str(k): v for k, v in self.manifest_counts.items()},
            endpoints=self.endpoints(),
            workers=self._sample_workers(),
            pages_low_confidence=r.pages_low_confidence,
            limiter=self.limiter(),
        )

    async def _refresh_manifest_figures(self, manifest: AsyncManifest) -> None:
        try:
            self.last_success = await manifest.last_success()
            self.manifest_counts = await manifest.counts()
        except (sqlite3.Error, FatalError) as exc:
            self.log.warning("manifest figures not read", error=str(exc))

    def write_metrics(self, *, in_progress: bool) -> None:
        try:
            write_metrics(self.metrics_path, self.metrics_snapshot(in_progress=in_progress))
        except (OSError, sqlite3.Error) as exc:
            self.log.warning("metrics file not written", path=str(self.metrics_path),
                             error=str(exc))

    def write_final_metrics(self, manifest: Manifest) -> None:
        """At the end, from the event loop's thread (the writer thread has stopped)."""
        try:
            self.last_success = manifest.last_success()
            self.manifest_counts = manifest.counts()
        except (sqlite3.Error, FatalError) as exc:
            self.log.warning("manifest figures not read", error=str(exc))
        self.write_metrics(in_progress=False)

    async def tick_forever(self, manifest: AsyncManifest) -> None:
        bar = self.progress.mode == "bar"
        step = 0.5 if bar else self.interval
        since_metrics = 0.0
        await self._refresh_manifest_figures(manifest)
        self.write_metrics(in_progress=True)
        while True:
            await asyncio.sleep(step)
            self.progress.show(self.progress_snapshot())
            since_metrics += step
            if since_metrics >= self.interval:
                since_metrics = 0.0
                await self._refresh_manifest_figures(manifest)
                self.write_metrics(in_progress=True)
