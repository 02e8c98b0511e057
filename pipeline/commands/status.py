"""`ocr-pipeline status`: what the output's manifest holds, as data and as text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.manifest import Manifest, manifest_path
from pipeline.manifest.states import DocState
from pipeline.run.report import failure_text, review_lines

STATUS_ORDER = (DocState.DONE, DocState.FAILED, DocState.PENDING, DocState.RUNNING)


def status(output: Path) -> dict[str, Any]:
    path = manifest_path(output)
    if not path.exists():
        raise ConfigError(f"no manifest at {path}: has a run written to {output} yet?")
    manifest = Manifest(path)
    try:
        counts = manifest.counts()
        last = manifest.last_summary() or {}
        return {
            "output": str(output),
            "manifest": str(path),
            "documents": {str(state): counts.get(state, 0) for state in STATUS_ORDER},
            "totals": manifest.totals(),
            "recent_runs": [_run_times_iso(run) for run in manifest.recent_runs()],
            "failures": [
                {"path": f.path, "category": f.error_category, "message": f.error_message,
                 "attempts": f.attempts}
                for f in manifest.failures()
            ],
            "batch_jobs": _batch_jobs(manifest),
            "endpoints": (last.get("requests") or {}).get("endpoints", {}),
            **_low_confidence(last),
        }
    finally:
        manifest.close()


def _low_confidence(summary: dict[str, Any]) -> dict[str, Any]:
    """The last finished run's lowest-confidence pages (its report keeps the lowest 100)."""
    return {"pages_low_confidence": summary.get("pages_low_confidence", 0),
            "low_confidence_pages": summary.get("low_confidence_pages", [])}


def _batch_jobs(manifest: Manifest) -> list[dict[str, Any]]:
    """Batch jobs still open (docs/batch.md), with their progress in requests."""
    from pipeline.manifest.states import OPEN_BATCH_JOBS, BatchJobState

    return [
        {"job_id": j["job_id"], "state": j["state"], "status": j["status"],
         "requests": j["requests"], "completed": j["completed"], "succeeded": j["succeeded"],
         "failed": j["failed"], "run_id": j["run_id"], "created_at": iso_time(j["created_at"])}
        for j in manifest.batch_jobs(OPEN_BATCH_JOBS) if j["state"] != BatchJobState.WRITING
    ]


def iso_time(ts: float | None) -> str | None:
    """ISO 8601 in UTC, to the second, as run reports write it (the manifest stores epochs)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _run_times_iso(run: dict[str, Any]) -> dict[str, Any]:
    return {**run, **{k: iso_time(run.get(k)) for k in ("started_at", "finished_at")}}


def render_status(data: dict[str, Any]) -> list[str]:
    docs = data["documents"]
    lines = [
        f"output: {data['output']}",
        "documents: " + ", ".join(f"{k} {v}" for k, v in docs.items()),
        f"pages done: {data['totals']['pages']}, cost so far: ${data['totals']['cost']:.4f}",
    ]
    if data["recent_runs"]:
        lines.append("recent runs:")
        for run in data["recent_runs"]:
            code = "running or killed" if run["exit_code"] is None else f"exit {run['exit_code']}"
            lines.append(f"  {run['run_id']}  started {run['started_at'] or '-'}  {code}")
    if data.get("batch_jobs"):
        lines.append(f"batch jobs pending ({len(data['batch_jobs'])}):")
        for j in data["batch_jobs"]:
            lines.append(f"  {j['job_id'] or '(not created yet)'}  {j['status'] or j['state']}"
                         f"  {j['completed']}/{j['requests']} requests")
    if data.get("endpoints"):
        lines.append("endpoints (last run):")
        for name, e in data["endpoints"].items():
            lines.append(f"  {name}: {e['state']}, {e['requests']} requests, {e['pages']} pages,"
                         f" {e['throttled']} 429s, {e['failures']} failures"
                         + (f" ({e['reason']})" if e.get("reason") else ""))
    if data.get("pages_low_confidence"):
        lines.append("last run, pages to review:")
        lines += [line[2:] for line in review_lines(data["pages_low_confidence"],
                                                    data["low_confidence_pages"], shown=20)]
    if data["failures"]:
        lines.append(f"failures ({len(data['failures'])}):")
        for f in data["failures"]:
            lines.append(f"  [{f['category']}] {failure_text(f['path'], f['message'] or '')}")
    return lines
