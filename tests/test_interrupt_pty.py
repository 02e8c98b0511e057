"""Ctrl-C in a real terminal stops a local-engine run cleanly, like a signal to the main process.

A terminal delivers SIGINT to the whole foreground process group, so the local engine's OCR worker
processes receive it too. The run must still stop cleanly: exit 130, the run report written, the
run no longer "running" in `status`, and a rerun finishing the rest. These tests run the pipeline
in its own session with a pseudo-terminal as its controlling terminal, as a shell would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, pipeline_env
from tests.local_fixtures import PARAGRAPHS, TITLES, prose_page, render, to_bytes
from tests.processes import alive, multiprocessing_workers

PAGES = 12  # enough for a few seconds of OCR on two cores


def scanned_pages(folder: Path, count: int) -> list[str]:
    """`count` single-page 150-dpi scans (PNG) with known text; returns their names."""
    folder.mkdir(parents=True)
    names = []
    for n in range(count):
        page = prose_page(TITLES[n % len(TITLES)], PARAGRAPHS[n % 5 : n % 5 + 3])
        name = f"scan{n:02d}.png"
        (folder / name).write_bytes(to_bytes(render(page.pdf, 150), dpi=(150, 150)))
        names.append(name)
    return names


class TerminalRun:
    """`python -m pipeline ARGS` as the foreground job of a pseudo-terminal of its own."""

    def __init__(self, args: list[str]) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=pipeline_env(None),
            start_new_session=True,  # session and process group leader, like a shell's job
            preexec_fn=lambda: _take_terminal(slave),
        )
        os.close(slave)
        self.master = master
        self.screen = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += data

    def text(self) -> str:
        return self.screen.decode("utf-8", "replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)
            os.close(self.master)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _take_terminal(fd: int) -> None:
    """In the child: make the pty our controlling terminal (we lead a new session already)."""
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def run_args(inp: Path, out: Path) -> list[str]:
    return ["run", "--config", str(REPO / "config/default.yaml"), "--input", str(inp),
            "--output", str(out), "--workers", "2"]


def outputs(out: Path) -> set[str]:
    return {p.name.removesuffix(".json") for p in out.glob("*.json")}


def wait_for_first_output(run: TerminalRun, out: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not outputs(out):
        assert run.proc.poll() is None, f"the run ended before any page was done:\n{run.text()}"
        assert time.monotonic() < deadline, run.text()
        time.sleep(0.02)


def status(out: Path, *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "status", "--output", str(out), *flags],
        capture_output=True, text=True, cwd=REPO, env=pipeline_env(None), timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    "interrupt",
    [
        pytest.param(lambda run: os.killpg(run.proc.pid, signal.SIGINT), id="killpg-SIGINT"),
        pytest.param(lambda run: os.killpg(run.proc.pid, signal.SIGTERM), id="killpg-SIGTERM"),
        pytest.param(lambda run: os.write(run.master, b"\x03"), id="typed-ctrl-c"),
    ],
)
def test_ctrl_c_to_the_process_group_stops_cleanly_with_a_report_and_resumes(
    tmp_path: Path, interrupt
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    names = scanned_pages(inp, PAGES)
    run = TerminalRun(run_args(inp, out))
    try:
        wait_for_first_output(run, out)
        interrupt(run)
        code = run.wait(60)
    finally:
        run.kill()
    screen = run.text()
    assert code == 130, screen
    assert "stopping" in screen, screen
    reports = list((out / ".ocr-pipeline/runs").glob("*.json"))
    assert len(reports) == 1, f"no run report written:\n{screen}"
    report = json.loads(reports[0].read_text())
    assert report["exit_code"] == 130
    done_before = outputs(out)
    assert done_before and len(done_before) < PAGES, "interrupted mid-run"

    state = json.loads(status(out, "--json"))
    assert state["documents"]["running"] == 0
    assert [r["exit_code"] for r in state["recent_runs"]] == [130], state["recent_runs"]
    assert "running or killed" not in status(out)

    rerun = TerminalRun(run_args(inp, out))
    try:
        assert rerun.wait(120) == 0, rerun.text()
    finally:
        rerun.kill()
    assert outputs(out) == set(names)
    assert json.loads(status(out, "--json"))["documents"]["done"] == PAGES


def test_ocr_workers_left_the_job_group_yet_die_with_a_killed_run(tmp_path: Path) -> None:
    """Out of the terminal's reach, the workers still never outlive their run (PR_SET_PDEATHSIG)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    scanned_pages(inp, 6)
    run = TerminalRun(run_args(inp, out))
    try:
        wait_for_first_output(run, out)
        workers = multiprocessing_workers(run.proc.pid)
        assert workers, "the local engine's worker processes were not found"
        assert all(os.getpgid(pid) != run.proc.pid for pid in workers), "workers still in the job's group"
        os.killpg(run.proc.pid, signal.SIGKILL)  # the main process only: workers are elsewhere
        run.wait(30)
    finally:
        run.kill()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), "OCR workers outlived the killed run"
