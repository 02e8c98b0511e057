"""Prometheus text-format metrics for node_exporter's textfile collector.

Written atomically (temp file + rename, by prometheus_client) during the run and at its end, to
`<out>/.ocr-pipeline/metrics.prom` unless `--metrics-file` moves it. Figures are this run's, except
`ocr_pipeline_last_success_timestamp_seconds` and the `ocr_pipeline_manifest_documents` gauge,
which come from the manifest and so survive runs that had nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from pipeline.transport.ratelimit import LimiterSnapshot

if hasattr(prometheus_client, "disable_created_metrics"):
    prometheus_client.disable_created_metrics()

METRIC_NAMES = (
    "ocr_pipeline_documents",
    "ocr_pipeline_pages",
    "ocr_pipeline_requests_total",
    "ocr_pipeline_retries_total",
    "ocr_pipeline_throttled_total",
    "ocr_pipeline_bytes_sent_total",
    "ocr_pipeline_cost_dollars",
    "ocr_pipeline_last_success_timestamp_seconds",
    "ocr_pipeline_run_duration_seconds",
    "ocr_pipeline_run_in_progress",
    "ocr_pipeline_run_exit_code",
    "ocr_pipeline_manifest_documents",
    "ocr_pipeline_pages_low_confidence",
)
# Only for the local engine: OCR processes, or the Dask workers connected (`--cluster`).
LOCAL_METRIC_NAMES = ("ocr_pipeline_workers",)


@dataclass
class MetricsSnapshot:
    documents: dict[str, int]  # this run: done, failed, interrupted, unchanged, todo
    pages: dict[str, int]  # this run: done, from_checkpoint
    requests_by_status: dict[str, int]
    retries: int
    throttled: int
    bytes_sent: int
    cost: float
    duration_s: float
    in_progress: bool
    exit_code: int | None = None
    last_success: float | None = None
    manifest_documents: dict[str, int] = field(default_factory=dict)
    workers: int | None = None  # local engine: processes, or Dask workers connected now
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # `endpoints:` lanes
    pages_low_confidence: int = 0  # this run: pages under outputs.confidence_threshold
    limiter: LimiterSnapshot | None = None  # a single hosted endpoint's rate limiter


def render_registry(snap: MetricsSnapshot) -> CollectorRegistry:
    reg = CollectorRegistry()
    docs = Gauge("ocr_pipeline_documents", "Documents of this run by state", ["state"],
                 registry=reg)
    for state, n in snap.documents.items():
        docs.labels(state=state).set(n)
    pages = Gauge("ocr_pipeline_pages", "Pages of this run by state", ["state"], registry=reg)
    for state, n in snap.pages.items():
        pages.labels(state=state).set(n)
    requests = Counter("ocr_pipeline_requests", "OCR requests of this run by HTTP status",
                       ["status"], registry=reg)
    for status, n in snap.requests_by_status.items():
        requests.labels(status=status).inc(n)
    Counter("ocr_pipeline_retries", "Retried requests", registry=reg).inc(snap.retries)
    Counter("ocr_pipeline_throttled", "Requests answered 429", registry=reg).inc(snap.throttled)
    Counter("ocr_pipeline_bytes_sent", "Request bytes sent", registry=reg).inc(snap.bytes_sent)
    Gauge("ocr_pipeline_cost_dollars", "Estimated cost of this run in US$",
          registry=reg).set(snap.cost)
    last = Gauge("ocr_pipeline_last_success_timestamp_seconds",
                 "Unix time a document was last completed (any run)", registry=reg)
    last.set(snap.last_success or 0)
    Gauge("ocr_pipeline_run_duration_seconds", "Seconds since this run started",
          registry=reg).set(snap.duration_s)
    Gauge("ocr_pipeline_run_in_progress", "1 while the run is going", registry=reg).set(
        1 if snap.in_progress else 0
    )
    Gauge("ocr_pipeline_run_exit_code", "Exit code of the finished run (-1 while running)",
          registry=reg).set(-1 if snap.exit_code is None else snap.exit_code)
    manifest = Gauge("ocr_pipeline_manifest_documents", "Documents in the manifest by state",
                     ["state"], registry=reg)
    for state, n in snap.manifest_documents.items():
        manifest.labels(state=state).set(n)
    Gauge("ocr_pipeline_pages_low_confidence", "Pages of this run scored under the confidence"
          " threshold (to review)", registry=reg).set(snap.pages_low_confidence)
    if snap.workers is not None:
        Gauge("ocr_pipeline_workers", "Workers reading pages now (local engine: processes, or Dask"
              " workers with --cluster)", registry=reg).set(snap.workers)
    _endpoint_metrics(reg, snap.endpoints)
    if snap.limiter is not None:
        _limiter_metrics(reg, snap.limiter)
    return reg


def _limiter_metrics(reg: CollectorRegistry, lim: LimiterSnapshot) -> None:
    """The rate limiter as it is now (docs/rate-limits.md): the pace, where the limit came from,
    requests in flight against the Little's-law target, the latency it sizes them with."""
    Gauge("ocr_pipeline_rate_requests_per_second", "Requests per second the limiter paces at now"
          " (0: no limit)", registry=reg).set(lim.rate)
    Gauge("ocr_pipeline_rate_limit_source", "Where the limit comes from (1 for the source in force)",
          ["source"], registry=reg).labels(source=lim.limit_source).set(1)
    Gauge("ocr_pipeline_requests_in_flight", "Requests sent and not answered yet",
          registry=reg).set(lim.in_flight)
    Gauge("ocr_pipeline_requests_in_flight_target", "Requests in flight the limiter aims at"
          " (latency x rate)", registry=reg).set(lim.target_in_flight)
    Gauge("ocr_pipeline_request_latency_seconds", "Mean latency of recent answers",
          registry=reg).set(lim.latency or 0)
    Counter("ocr_pipeline_rate_rejections", "429s heard by the limiter",
            registry=reg).inc(lim.rejections)
    Counter("ocr_pipeline_rate_pauses", "Global pauses (clustered 429s, remaining = 0)",
            registry=reg).inc(lim.pauses)


def _endpoint_metrics(reg: CollectorRegistry, endpoints: dict[str, dict[str, Any]]) -> None:
    """Per endpoint of `endpoints:`: requests, pages, 429s, failures, and whether it takes work."""
    if not endpoints:
        return
    names = ("requests", "pages", "throttled", "failures")
    gauges = {n: Gauge(f"ocr_pipeline_endpoint_{n}", f"{n.capitalize()} of this run per endpoint",
                       ["endpoint"], registry=reg) for n in names}
    up = Gauge("ocr_pipeline_endpoint_up", "1 while the endpoint takes work (0: breaker open or"
               " drained)", ["endpoint"], registry=reg)
    for name, figures in endpoints.items():
        for n in names:
            gauges[n].labels(endpoint=name).set(figures.get(n, 0))
        up.labels(endpoint=name).set(1 if figures.get("state") == "ok" else 0)


def write_metrics(path: Path, snap: MetricsSnapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), render_registry(snap))
