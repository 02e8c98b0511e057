"""SIGKILL of a real `python -m pipeline run --mode batch` at each step of a batch job's life,
then a resume: every document done, no chunk answered twice, no job created twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import pipeline_env
from tests.faultkit import (
    answers_over_one,
    assert_accounted,
    assert_no_partial_outputs,
    check_after_kill,
    chunk_count,
    make_docs,
    run_to_end,
)
from tests.test_batch_mode import DOCS, batch_args, manifest_query, run_report, write_batch_config

CRASH_POINTS = {
    # lines written and sealed, nothing uploaded
    "before-upload": "batch_before_upload:1",
    # the file is on the server, its id not recorded
    "after-upload": "batch_after_upload:1",
    # the job exists on the server, its id not recorded: the next run must adopt it
    "after-job-created": "batch_job_created:1",
    # the job is recorded and being polled
    "while-polling": "batch_polling:1",
    # the results are half downloaded
    "while-downloading": "batch_downloading:1",
}


@pytest.mark.parametrize("where", list(CRASH_POINTS))
async def test_sigkill_at_each_batch_step_then_resume_pays_each_chunk_once(
    tmp_path: Path, fake_server, where: str
) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    config = write_batch_config(tmp_path / "c.yaml", max_requests_per_job=3)
    args = batch_args(inp, out, server.url, "--config", str(config))
    code, output, _ = await run_to_end(
        args, pipeline_env(OCR_PIPELINE_CRASH_AT=CRASH_POINTS[where]), tmp_path / "killed.log")
    assert code == -signal.SIGKILL, f"the crash point was never reached (exit {code}):\n{output}"
    check_after_kill(out, DOCS)
    fake = batch_of(server)
    created_before = fake.jobs_created

    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "resume.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert_no_partial_outputs(out, DOCS)
    total = chunk_count(DOCS, 2)
    assert len(fake.by_custom_id) == total
    assert all(n == 1 for n in fake.by_custom_id.values()), fake.by_custom_id
    assert answers_over_one(server.stats) == 0 and server.stats.requests == 0
    assert fake.jobs_created == 2, "a job was created twice"
    report = run_report(out)["batch"]
    if where == "after-job-created":
        assert created_before == 1 and report["jobs_adopted"] == 1
    if where in ("while-polling", "while-downloading"):
        assert report["jobs_created"] == 0, "the resume created jobs again"
    assert manifest_query(out, "SELECT COUNT(*) FROM batch_chunks") == [(0,)]
