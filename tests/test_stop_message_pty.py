"""The first Ctrl-C, typed in a real terminal while requests hang, says what the run waits for
and how to stop now; the second stops now (issue 11 point 6)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pipeline.errors import ExitCode
from tests.pdfgen import write_pdf
from tests.test_interrupt_pty import TerminalRun


async def wait_until(condition, what: str, run: TerminalRun, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.proc.poll() is None, f"the run ended before {what}:\n{run.text()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{run.text()}"
        await asyncio.sleep(0.05)


async def test_first_ctrl_c_says_what_it_waits_for_and_the_second_stops_now(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server(latency=60)  # every request hangs for a minute
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for n in range(6):
        write_pdf(inp / f"d{n}.pdf", f"d{n}", 1)
    config = tmp_path / "hosted.yaml"
    config.write_text(f"backend: mistral\nendpoint: {server.url}\napi_key: sk-pty-test\n"
                      "rps: 100\nshutdown_grace: 45\n")
    run = TerminalRun(["run", "--config", str(config), "--input", str(inp), "--output", str(out)])
    try:
        await wait_until(lambda: server.stats.in_flight >= 3, "requests in flight", run)
        os.write(run.master, b"\x03")  # Ctrl-C, typed
        await wait_until(lambda: "Ctrl-C again to stop now" in run.text(), "stop message", run)
        text = run.text()
        assert "waiting up to 45 s for" in text and "requests in flight" in text
        started = time.monotonic()
        os.write(run.master, b"\x03")
        code = await asyncio.to_thread(run.wait, 20)
        assert code == ExitCode.INTERRUPTED, run.text()
        assert time.monotonic() - started < 15, "the second Ctrl-C stops now, not after the grace"
    finally:
        run.kill()
    assert list((out / ".ocr-pipeline" / "runs").glob("*.json")), "the run report is written"
