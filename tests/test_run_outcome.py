"""How a run ends: exit codes a cron job can trust, and a dry run that leaves no trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ExitCode
from pipeline.run.outcome import Outcome, StopReason, StopRequest, decide_outcome, exit_code
from tests.conftest import load_json, pipeline_env, run_args, run_pipeline, run_pipeline_process
from tests.pdfgen import write_pdf


def tree_with_one_bad_file(root: Path) -> None:
    root.mkdir()
    write_pdf(root / "good.pdf", "good", 1)
    (root / "bad.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF at all\n")


async def test_failures_left_by_an_earlier_run_keep_the_exit_code_at_1(tmp_path: Path,
                                                                        fake_server) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    tree_with_one_bad_file(inp)
    first = await run_pipeline(inp, out, server.url)
    assert (first.exit_code, first.documents_failed) == (ExitCode.SOME_FAILED, 1)
    # Nothing to do in the rerun, but the input is not all done: cron must not see success.
    proc = await run_pipeline_process(run_args(inp, out, server.url, "--progress", "off"),
                                      pipeline_env())
    assert proc.returncode == ExitCode.SOME_FAILED, proc.stderr
    runs = sorted((out / ".ocr-pipeline" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    report = load_json(runs[-1])
    assert report["documents_failed"] == 0 and report["failed_earlier"] == 1
    assert report["outcome"] == "some_failed"
    # Fixed at the source, the file is redone and the exit code goes back to 0.
    write_pdf(inp / "bad.pdf", "bad", 1)
    assert (await run_pipeline(inp, out, server.url)).exit_code == ExitCode.OK


async def test_a_dry_run_creates_no_output_folder_lock_or_manifest(tmp_path: Path,
                                                                   fake_server) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    tree_with_one_bad_file(inp)
    report = await run_pipeline(inp, out, server.url, dry_run=True)
    assert report.estimate is not None and report.estimate["documents"] >= 1
    assert not out.exists()
    assert server.stats.requests == 0


@pytest.mark.parametrize(("fatal", "stop", "failed_now", "failed_earlier", "expected"), [
    (False, None, 0, 0, Outcome.OK),
    (False, None, 2, 0, Outcome.SOME_FAILED),
    (False, None, 0, 3, Outcome.SOME_FAILED),
    (False, StopRequest(StopReason.SIGINT), 2, 0, Outcome.INTERRUPTED),
    (False, StopRequest(StopReason.BUDGET, "10 pages"), 0, 0, Outcome.BUDGET),
    (True, StopRequest(StopReason.SIGTERM), 1, 1, Outcome.FATAL),
    (False, StopRequest(StopReason.PLANNING_ERROR), 0, 0, Outcome.FATAL),
])
def test_one_rule_decides_the_outcome(fatal: bool, stop: StopRequest | None, failed_now: int,
                                      failed_earlier: int, expected: Outcome) -> None:
    assert decide_outcome(fatal=fatal, stop=stop, failed_now=failed_now,
                          failed_earlier=failed_earlier) == expected


def test_every_outcome_has_its_exit_code() -> None:
    assert {o: int(exit_code(o)) for o in Outcome} == {
        Outcome.OK: 0, Outcome.SOME_FAILED: 1, Outcome.FATAL: 3, Outcome.INTERRUPTED: 130,
        Outcome.BUDGET: 3,
    }


async def test_a_planning_error_ends_the_run_with_a_report_and_exit_3(tmp_path: Path, fake_server,
                                                                      monkeypatch) -> None:
    """A bug or an unexpected error while planning (simulated: the decision raises on the
    fourth file) lets the documents already open finish, then ends the run as fatal (exit 3)
    with the reason in the run report and the manifest's run row, so `status` does not show it
    as running forever; the next run resumes."""
    import pipeline.stages.planner as planner

    for n in range(6):
        write_pdf(tmp_path / "in" / f"d{n}.pdf", f"d{n}", 1)
    real_decide = planner.decide
    seen: list[str] = []

    def failing_decide(found, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.append(found.rel)
        if len(seen) == 4:
            raise RuntimeError("simulated planner bug")
        return real_decide(found, *args, **kwargs)

    monkeypatch.setattr(planner, "decide", failing_decide)
    server = await fake_server()
    report = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert (report.outcome, report.exit_code) == ("fatal", 3)
    assert "planning the input failed: RuntimeError: simulated planner bug" in report.message
    saved = load_json(tmp_path / "out" / ".ocr-pipeline" / "runs" / f"{report.run_id}.json")
    assert saved["exit_code"] == 3 and "simulated planner bug" in saved["message"]
    proc = await run_pipeline_process(["status", "--output", str(tmp_path / "out"), "--json"],
                                      pipeline_env())
    runs = json.loads(proc.stdout)["recent_runs"]
    assert [(r["run_id"], r["exit_code"]) for r in runs] == [(report.run_id, 3)]
    assert runs[0]["finished_at"] is not None

    monkeypatch.setattr(planner, "decide", real_decide)
    again = await run_pipeline(tmp_path / "in", tmp_path / "out", server.url)
    assert again.exit_code == 0
    assert all((tmp_path / "out" / f"d{n}.pdf.json").is_file() for n in range(6))
