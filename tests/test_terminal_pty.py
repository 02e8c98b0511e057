"""The progress bar in a real terminal (issue 11 point 5): the CLI runs under a pty of 80 and of
40 columns against the fake server in its own process (a fixed latency per answer and one
document at a time make the run last seconds on any machine, so the bar is redrawn many times).
What it writes is replayed on a small terminal emulator (carriage return, newline, erase-line,
automatic wrap at the last column) and the screen is checked: nothing ever wrapped, no bar left
behind, no log line glued onto a bar."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import REPO, pipeline_env
from tests.pdfgen import write_pdf

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
BAR = re.compile(r"\[[#.]{3,}\]? ?\d+/\d+ docs|\d+/\d+ docs")


class Screen:
    """Just enough of a terminal: printable characters, CR, LF, CSI K (erase to end of line);
    other CSI sequences (colours) are ignored. Writing past the last column wraps, as a real
    terminal does, and each wrapped line is kept in `wraps`."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.lines: list[list[str]] = [[]]
        self.col = 0
        self.wraps: list[str] = []

    @property
    def line(self) -> list[str]:
        return self.lines[-1]

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            match = CSI.match(text, i)
            if match:
                if match.group(2) == "K":
                    del self.line[self.col:]
                i = match.end()
                continue
            ch = text[i]
            i += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.lines.append([])
                self.col = 0
            elif ch >= " ":
                if self.col >= self.columns:
                    self.wraps.append("".join(self.line))
                    self.lines.append([])
                    self.col = 0
                if self.col < len(self.line):
                    self.line[self.col] = ch
                else:
                    self.line.extend(" " * (self.col - len(self.line)))
                    self.line.append(ch)
                self.col += 1

    def text_lines(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def set_size(fd: int, columns: int, rows: int = 24) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def text_image(path: Path, words: str) -> None:
    img = Image.new("L", (700, 120), 255)
    ImageDraw.Draw(img).text((20, 40), words, fill=0)
    img = img.resize((1400, 240))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def make_inputs(folder: Path) -> None:
    for n in range(30):
        write_pdf(folder / f"doc-{n:02}-with-a-rather-long-name.pdf", f"d{n}", 1)
    for n in range(4):
        text_image(folder / f"scan-{n}.png", f"Scanned page number {n} of the test")
    (folder / "empty.pdf").write_bytes(b"")  # a failure: a warning log line during the bar


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def endpoint() -> Iterator[str]:
    """The fake server in its own process, 0.1 s per answer: 34 documents one at a time take
    about 3.5 s, several bar redraws (every 0.5 s) however fast the machine."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "fake-server", "--port", str(port),
                               "--latency", "0.1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=pipeline_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "fake server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def bar_run_args(inp: Path, out: Path, endpoint: str) -> list[str]:
    return ["run", "--backend", "mistral", "--endpoint", endpoint, "--rps", "0", "--workers", "1",
            "--progress", "bar", "--input", str(inp), "--output", str(out)]


def run_in_pty(args: list[str], columns: int, resize_to: int | None = None) -> str:
    """Run the CLI with stdout and stderr on a pty of `columns`; return all it wrote. With
    `resize_to`, the window is resized as soon as the first bar is drawn."""
    master, slave = pty.openpty()
    set_size(slave, columns)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=pipeline_env(TERM="xterm"), cwd=REPO)
    os.close(slave)
    chunks: list[bytes] = []
    resized = threading.Event()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)
            if resize_to and not resized.is_set() and b" docs" in b"".join(chunks):
                set_size(master, resize_to)
                resized.set()
                chunks.append(b"\x00RESIZED\x00")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=120) in (0, 1), b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def check_screen(written: str, columns: int) -> list[str]:
    screen = Screen(columns)
    screen.feed(written)
    lines = screen.text_lines()
    # Log lines may be longer than the window and wrap; the bar never may.
    wrapped_bars = [line for line in screen.wraps if BAR.search(line)]
    assert not wrapped_bars, f"a bar wrapped at {columns} columns: {wrapped_bars[:3]}"
    leftover_bars = [line for line in lines if BAR.search(line)]
    assert not leftover_bars, f"bars left on the screen: {leftover_bars[:3]}"
    return lines


@pytest.mark.parametrize("columns", [80, 40])
def test_bar_fits_the_terminal_and_log_lines_go_above_it(tmp_path: Path, columns: int,
                                                         endpoint: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp)
    written = run_in_pty(bar_run_args(inp, out, endpoint), columns)
    assert len(BAR.findall(written)) >= 2, f"no bar drawn: {written[:500]!r}"
    lines = check_screen(written, columns)
    screen_text = "".join(lines)  # a log line longer than the window is on several lines
    assert "state=failed" in screen_text and "empty.pdf" in screen_text, lines
    assert re.search(r"ocr-pipeline run \S+: some_failed \(exit 1\)", screen_text), lines[-12:]
    assert (out / "doc-29-with-a-rather-long-name.pdf.json").is_file()


def test_bar_follows_a_resize(tmp_path: Path, endpoint: str) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_inputs(inp)
    written = run_in_pty(bar_run_args(inp, out, endpoint), 100, resize_to=40)
    before, _, after = written.partition("\x00RESIZED\x00")
    assert after, "the window was resized during the run"
    bars_after = [seg for seg in re.split(r"[\r\n]", CSI.sub("", after)) if BAR.search(seg)]
    assert bars_after, "bars drawn after the resize"
    assert all(len(seg) < 40 for seg in bars_after), bars_after[:3]
    assert any(len(seg) > 40 for seg in re.split(r"[\r\n]", CSI.sub("", before))
               if BAR.search(seg)), "before the resize the bar used the wider window"
