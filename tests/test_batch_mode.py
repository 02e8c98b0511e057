"""Batch mode end to end: a real `python -m pipeline run --mode batch` against the fake server's
Files and Batch API (docs/batch.md)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import pipeline_env, run_args
from tests.faultkit import (
    MANIFEST,
    answers_over_one,
    assert_accounted,
    assert_no_partial_outputs,
    chunk_count,
    make_docs,
    run_to_end,
)

DOCS = {"a.pdf": 3, "b.pdf": 1, "c/d.pdf": 2, "e.pdf": 1}
FAST = ("--rps", "0", "--max-pages-per-request", "2", "--workers", "4", "--progress", "json")


def batch_args(inp: Path, out: Path, url: str, *extra: str) -> list[str]:
    return run_args(inp, out, url, "--mode", "batch", *FAST, *extra)


def write_batch_config(path: Path, **batch: object) -> Path:
    values = {"poll_interval_min": 0.05, "poll_interval_max": 0.2, **batch}
    path.write_text("batch:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path


def manifest_query(out: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(out / MANIFEST)) as db:
        return db.execute(sql).fetchall()


def run_report(out: Path) -> dict:
    reports = sorted((out / ".ocr-pipeline" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text())


async def test_batch_run_waits_collects_and_stores_every_document_once(tmp_path: Path,
                                                                      fake_server) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    config = write_batch_config(tmp_path / "c.yaml", max_requests_per_job=3)
    code, output, _ = await run_to_end(batch_args(inp, out, server.url, "--config", str(config)),
                                       pipeline_env(), tmp_path / "run.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert_no_partial_outputs(out, DOCS)
    fake = batch_of(server)
    total = chunk_count(DOCS, 2)
    assert server.stats.requests == 0, "batch mode sent a synchronous request"
    assert len(server.stats.ok_by_document) == total and answers_over_one(server.stats) == 0
    assert fake.jobs_created == 2  # 5 requests, 3 per job
    report = run_report(out)
    pages = sum(DOCS.values())
    assert report["batch"]["pages_collected"] == pages
    assert abs(report["cost"] - pages * 2.0 / 1000) < 1e-9  # mistral-ocr-latest $4, at 50%
    source = json.loads((out / "a.pdf.json").read_text())["source"]
    assert source["batch"]["jobs"] and set(source["batch"]["jobs"]) <= set(fake.jobs)
    assert manifest_query(out, "SELECT COUNT(*) FROM batch_chunks") == [(0,)]
    assert {s for (s,) in manifest_query(out, "SELECT state FROM batch_jobs")} == {"collected"}
