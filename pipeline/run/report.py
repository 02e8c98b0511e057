"""The run report: data first (a JSON file per run), then rendered as a summary for people."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.stages.confidence import LowPage
from pipeline.stages.store import atomic_write

REPORT_VERSION = 1
LOW_CONFIDENCE_KEPT = 100  # the lowest pages listed; all of them are counted
WARNINGS_KEPT = 1000

if TYPE_CHECKING:
    from pipeline.run.document_job import DocumentResult


@dataclass
class Failure:
    path: str
    category: str
    message: str


@dataclass
class RunReport:
    run_id: str
    started_at: str
    backend: str
    model: str
    input: str
    output: str
    dry_run: bool = False
    finished_at: str | None = None
    duration_s: float = 0.0
    exit_code: int = 0
    outcome: str = "ok"  # ok | some_failed | fatal | interrupted | budget
    message: str | None = None
    plan: dict[str, int] = field(default_factory=dict)  # decision -> documents
    documents_done: int = 0
    documents_failed: int = 0
    documents_interrupted: int = 0
    pages_done: int = 0
    pages_from_checkpoints: int = 0  # pages reused from an earlier run's persisted responses
    pages_same_content: int = 0  # pages answered for another document of the same bytes (dedup)
    cost: float = 0.0
    requests: dict[str, Any] = field(default_factory=dict)
    bytes_sent: int = 0
    failures: list[Failure] = field(default_factory=list)
    ignored: list[Failure] = field(default_factory=list)  # files seen but not documents
    failed_earlier: int = 0  # failed in an earlier run, left alone (see --retry-failed)
    estimate: dict[str, Any] | None = None
    page_methods: dict[str, int] = field(default_factory=dict)  # local engine: text_layer / ocr
    cluster: str | None = None  # local engine on a Dask cluster: the scheduler's address
    workers: int | None = None  # local engine: the most workers (processes, Dask workers) seen
    batch: dict[str, Any] | None = None  # batch mode: jobs, requests, pending (docs/batch.md)
    pdf_probes: dict[str, Any] | None = None  # PDFs opened in the probe process (pdf_probes.py)
    pages_low_confidence: int = 0  # pages under outputs.confidence_threshold
    low_confidence_pages: list[dict[str, Any]] = field(default_factory=list)  # the lowest, lowest first
    warnings: list[str] = field(default_factory=list)  # for a person to check; the run went on
    warnings_total: int = 0
    version: int = REPORT_VERSION

    def failures_by_category(self) -> dict[str, list[dict[str, str]]]:
        grouped: dict[str, list[dict[str, str]]] = {}
        for f in self.failures:
            grouped.setdefault(f.category, []).append({"path": f.path, "message": f.message})
        return grouped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures_by_category"] = self.failures_by_category()
        return data

    def write(self, runs_dir: Path) -> Path:
        path = runs_dir / f"{self.run_id}.json"
        atomic_write(path, json.dumps(self.to_dict(), indent=2).encode("utf-8"))
        return path

    def note_review(self, low: tuple[LowPage, ...], warnings: tuple[str, ...]) -> None:
        """A finished document's pages for review: counted, the lowest LOW_CONFIDENCE_KEPT of
        the run kept (memory stays bounded however many documents); its warnings likewise."""
        if low:
            self.pages_low_confidence += len(low)
            pages = self.low_confidence_pages + [p.to_dict() for p in low]
            pages.sort(key=lambda p: (p["confidence"], p["path"], p["page"]))
            self.low_confidence_pages = pages[:LOW_CONFIDENCE_KEPT]
        self.warnings_total += len(warnings)
        self.warnings.extend(warnings[:max(0, WARNINGS_KEPT - len(self.warnings))])

    def count_done(self, result: DocumentResult) -> None:
        """A document stored: its pages, cost and what the reviewer should look at."""
        self.documents_done += 1
        self.pages_done += result.pages
        self.pages_from_checkpoints += result.pages_reused
        self.pages_same_content += result.pages_same_content
        self.cost += result.cost
        for method, n in result.page_methods.items():
            self.page_methods[method] = self.page_methods.get(method, 0) + n
        self.note_review(result.low_confidence, result.warnings)

    def count_failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.documents_failed += 1

    def summary_lines(self) -> list[str]:
        head = "dry run" if self.dry_run else "run"
        lines = [
            f"ocr-pipeline {head} {self.run_id}: {self.outcome} (exit {self.exit_code})"
            + (f": {self.message}" if self.message else ""),
            "  plan: " + (", ".join(f"{k} {v}" for k, v in sorted(self.plan.items())) or "nothing"),
        ]
        if self.estimate:
            lines.append(self._estimate_line(self.estimate))
        if not self.dry_run:
            lines.append(
                f"  documents: {self.documents_done} done, {self.documents_failed} failed,"
                f" {self.documents_interrupted} interrupted; pages: {self.pages_done};"
                f" cost: ${self.cost:.4f}; {self.duration_s:.1f} s"
            )
            if self.pages_same_content:
                lines.append(f"  same content: {self.pages_same_content} pages taken from a"
                             " document with the same bytes, not paid again")
            lines += self._backend_lines()
            if self.batch is not None:
                lines.append(batch_line(self.batch))
        for category, items in sorted(self.failures_by_category().items()):
            lines.append(f"  failed ({category}): {len(items)}")
            for item in items[:20]:
                lines.append(f"    {failure_text(item['path'], item['message'])}")
            if len(items) > 20:
                lines.append(f"    … and {len(items) - 20} more (see the run report)")
        lines += review_lines(self.pages_low_confidence, self.low_confidence_pages)
        if self.warnings_total:
            lines.append(f"  warnings: {self.warnings_total}")
            lines += [f"    {w}" for w in self.warnings[:20]]
            if self.warnings_total > 20:
                lines.append(f"    … and {self.warnings_total - 20} more (see the run report)")
        if self.ignored:
            lines.append(f"  ignored (not documents): {len(self.ignored)}")
        if self.failed_earlier:
            lines.append(
                f"  failed in earlier runs and left alone: {self.failed_earlier}"
                " (ocr-pipeline status; --retry-failed to try them again)"
            )
        return lines

    def _estimate_line(self, e: dict[str, Any]) -> str:
        line = (f"  estimate: {e['documents']} documents, {e['pages']} pages, {e['requests']}"
                f" requests, ${e['cost']:.2f}, ")
        if e.get("pages_per_min"):
            return line + (
                f"about {_duration(e['seconds'])} at {e['pages_per_min']:g} pages/min"
                f" ({e.get('processes', 1)} processes at the measured speed on scanned pages;"
                " text-layer pages are far faster): an estimate")
        if e.get("rps"):
            return line + f"about {_duration(e['seconds'])} at {e['rps']:g} req/s"
        return line + "time unknown (no fixed rate: it depends on the service)"

    def _backend_lines(self) -> list[str]:
        """What matters for the backend used: requests, retries and 429s for a service; pages
        read from text layers vs OCR'd and pages/min for the local engine."""
        if self.backend == "local":
            minutes = self.duration_s / 60
            rate = f"{self.pages_done / minutes:.0f} pages/min" if minutes > 0 else "-"
            lines = [f"  speed: {rate}"]
            if self.page_methods:
                text = self.page_methods.get("text_layer", 0)
                ocr = self.page_methods.get("ocr", 0)
                lines = [f"  pages read: {text} from text layers, {ocr} by OCR; {rate}"]
            if self.cluster:
                lines.append(f"  cluster: {self.cluster}, {self.workers or 0} workers at most")
            return lines
        req = self.requests
        if not req:
            return []
        lines = [f"  requests: {req.get('attempts', 0)} sent, {req.get('retries', 0)} retries,"
                 f" {req.get('throttled', 0)} rate-limited (429)"]
        limit = req.get("rate_limit")
        if limit:
            lines.append("  " + rate_line(limit))
        return lines


def rate_line(limit: dict[str, Any]) -> str:
    """`rate: 19.6 a second at the end; limit 20 per 1 s (429s)`: the pace and what set it."""
    windows = ", ".join(f"{w['count']} per {w['seconds']:g} s ({w['source']})"
                        for w in limit.get("windows", []))
    rate = limit.get("rate_per_second") or 0
    pace = f"{rate:g} a second at the end" if rate else "no limit of ours"
    ramping = limit.get("limit_source") == "ramp"
    said = windows or ("still ramping: no limit heard yet" if ramping else "none known")
    return f"rate: {pace}; limit {said}"


def tally_page_methods(counts: dict[str, int], pages: list[Any]) -> None:
    """Count the pages of one answer by how they were read: the local engine's `method` per
    page (`text_layer` or `ocr`); pages without one are not counted."""
    for page in pages:
        method = page.get("method") if isinstance(page, dict) else None
        if isinstance(method, str):
            counts[method] = counts.get(method, 0) + 1


def review_lines(count: int, pages: list[dict[str, Any]], shown: int = 10) -> list[str]:
    """The lowest-confidence pages, for a reviewer (run summary and `status`)."""
    if not count:
        return []
    lines = [f"  low confidence: {count} pages under the threshold (confidence_threshold);"
             " lowest first:"]
    lines += [f"    {p['path']} page {p['page']}: {p['confidence']:.2f}" for p in pages[:shown]]
    if count > shown:
        lines.append(f"    … and {count - shown} more (the run report lists the lowest"
                     f" {LOW_CONFIDENCE_KEPT})")
    return lines


def failure_text(path: str, message: str) -> str:
    """`path: message`, without the path twice when the message already starts with it (stored
    messages do: they are read alone, e.g. with sqlite3)."""
    if message == path or message.startswith(f"{path}:") or message.startswith(f"{path} "):
        return message
    return f"{path}: {message}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def batch_line(b: dict[str, Any]) -> str:
    """Batch mode, in one line: what was submitted, collected and is still pending."""
    pending = b.get("jobs_pending") or []
    waiting = sum(int(j.get("requests") or 0) - int(j.get("completed") or 0) for j in pending)
    return (f"  batch: {b.get('requests_queued', 0)} requests submitted in"
            f" {b.get('jobs_created', 0)} jobs ({b.get('jobs_adopted', 0)} adopted),"
            f" {b.get('answers_collected', 0)} answers collected, {b.get('lines_failed', 0)} failed;"
            f" {len(pending)} jobs pending ({waiting} requests), at the batch price"
            f" ${b.get('price_per_1000_pages', 0):g}/1000 pages")
