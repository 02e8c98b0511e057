"""Helpers for the fault and crash tests: documents with known pages, checks of the output tree
and the manifest from outside, real pipeline subprocesses, and fault injection in a child.

Run as `python -m tests.faultkit <pipeline args>` it is the pipeline's CLI with hooks armed by
environment variables (each `WHAT:N` acts at the Nth occurrence, then SIGKILLs the process):

- `FAULTKIT_KILL_AT_SQL="<text>:N"`: when the Nth SQL statement containing <text> starts to run
  on a manifest connection, i.e. inside an open transaction, before its commit.
- `FAULTKIT_KILL_IN_WRITE="<suffix>:N"`: in the Nth write of a temporary file for an output
  ending in <suffix> (".json", ".md"), after half of its bytes reached the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, load_json
from tests.pdfgen import page_text, write_pdf

STATE = ".ocr-pipeline"
MANIFEST = f"{STATE}/manifest.sqlite3"
#: Every category a failed document may carry (pipeline.errors.Category).
CATEGORIES = {"input", "encrypted", "too_large", "rejected", "backend", "timeout", "storage",
              "internal"}


# ---- inputs -------------------------------------------------------------------------------


def make_docs(root: Path, docs: dict[str, int]) -> dict[str, int]:
    """Write one PDF per entry (relative path -> pages); each page carries `page_text`."""
    for rel, pages in docs.items():
        write_pdf(root / rel, rel, pages)
    return docs


def chunk_count(docs: dict[str, int], per_request: int) -> int:
    return sum(-(-pages // per_request) for pages in docs.values())


# ---- the output tree, checked from outside -------------------------------------------------


def output_files(out: Path) -> list[Path]:
    """Every file of the output tree except the run's own state folder."""
    if not out.exists():
        return []
    return sorted(p for p in out.rglob("*") if p.is_file() and STATE not in p.relative_to(out).parts)


def assert_complete(out: Path, rel: str, pages: int) -> None:
    """The document's JSON and markdown are there, parse, and hold every page's own text in order."""
    data = load_json(out / f"{rel}.json")
    assert [p["index"] for p in data["pages"]] == list(range(pages)), rel
    for i, page in enumerate(data["pages"]):
        assert page_text(rel, i) in page["markdown"], f"{rel}: page {i + 1} lost its text"
    assert data["source"]["path"] == rel and data["source"]["pages"] == pages
    assert_markdown_complete(out, rel, pages)


def assert_markdown_complete(out: Path, rel: str, pages: int) -> None:
    markdown = (out / f"{rel}.md").read_text(encoding="utf-8")
    positions = [markdown.index(page_text(rel, i)) for i in range(pages)]
    assert positions == sorted(positions), f"{rel}: pages out of order in the markdown"
    for i in range(pages):
        assert f"<!-- page {i + 1} -->" in markdown


def assert_no_partial_outputs(out: Path, docs: dict[str, int], *, debris_ok: bool = False) -> None:
    """Every output present is whole and parseable; no temporary debris unless `debris_ok`
    (right after a kill, before the next run had a chance to clean up)."""
    for path in output_files(out):
        rel = path.relative_to(out).as_posix()
        if path.name.endswith(".tmp"):
            assert debris_ok, f"temporary file left in the output tree: {rel}"
        elif rel.endswith(".json"):
            doc = rel.removesuffix(".json")
            assert doc in docs, f"unexpected output {rel}"
            assert_complete(out, doc, docs[doc])
        elif rel.endswith(".md"):
            doc = rel.removesuffix(".md")
            assert doc in docs, f"unexpected output {rel}"
            assert_markdown_complete(out, doc, docs[doc])


# ---- the manifest, read with plain sqlite3 like an operator would -------------------------


@dataclass(frozen=True)
class Row:
    state: str
    category: str | None
    message: str | None


def manifest_rows(out: Path) -> dict[str, Row]:
    """Each document's row; none when the manifest never got as far as its tables."""
    with contextlib.closing(sqlite3.connect(out / MANIFEST)) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='documents'").fetchone():
            return {}
        rows = db.execute("SELECT path, state, error_category, error_message FROM documents")
        return {path: Row(state, category, message) for path, state, category, message in rows}


def persisted_chunks(out: Path) -> set[str]:
    """sha256 of every chunk whose answer the manifest holds (or merged into a done document)."""
    path = out / MANIFEST
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {sha for (sha,) in db.execute("SELECT chunk_sha256 FROM chunks")}


def manifest_is_sound(out: Path) -> None:
    with contextlib.closing(sqlite3.connect(out / MANIFEST)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def check_after_kill(out: Path, docs: dict[str, int]) -> dict[str, Row]:
    """What a SIGKILL may leave: unfinished documents, never a half one. Every output present
    is whole; every document the manifest calls done has whole outputs; none is failed."""
    assert_no_partial_outputs(out, docs, debris_ok=True)
    if not (out / MANIFEST).exists():
        return {}
    manifest_is_sound(out)
    rows = manifest_rows(out)
    for rel, row in rows.items():
        assert row.state in ("pending", "running", "done"), (rel, row)
        if row.state == "done":
            assert_complete(out, rel, docs[rel])
    return rows


def assert_accounted(out: Path, docs: dict[str, int], *, allow_pending: bool = False) -> dict[str, Row]:
    """Every document is done with whole outputs, or failed with a category, a message and no
    output at all; with `allow_pending` (an aborted run) it may also be waiting for the next run.
    Never lost, never silently empty."""
    rows = manifest_rows(out)
    for rel, pages in docs.items():
        row = rows.get(rel)
        assert row is not None, f"{rel} was lost: no manifest row"
        if row.state == "done":
            assert_complete(out, rel, pages)
        elif row.state == "failed":
            assert row.category in CATEGORIES, (rel, row)
            assert row.message, (rel, row)
            leftovers = [p for p in output_files(out) if p.name.startswith(Path(rel).name + ".")]
            assert leftovers == [], f"failed document {rel} left outputs {leftovers}"
        else:
            assert allow_pending and row.state == "pending", (rel, row)
            assert not (out / f"{rel}.json").exists() or _whole(out, rel, pages), rel
    return rows


def _whole(out: Path, rel: str, pages: int) -> bool:
    assert_complete(out, rel, pages)
    return True


# ---- the fake server, observed --------------------------------------------------------------


def answers_over_one(stats: Any) -> int:
    """Valid answers beyond the first, over all chunks: pages paid for twice."""
    return sum(count - 1 for count in stats.ok_by_document.values() if count > 1)


@dataclass
class Timeline:
    """When the server saw each OCR request arrive, and when it sent each status."""

    arrivals: list[float] = field(default_factory=list)
    answers: list[tuple[float, str]] = field(default_factory=list)

    def answered(self, status: str) -> list[float]:
        return [t for t, s in self.answers if s == status]


def watch(server: Any) -> Timeline:
    """Record (monotonic clock) every request's arrival and every answer's status from now on."""
    timeline = Timeline()
    stats = server.stats
    enter, count_status = stats.enter, stats.count_status

    def recorded_enter() -> None:
        timeline.arrivals.append(time.monotonic())
        enter()

    def recorded_status(key: str) -> None:
        timeline.answers.append((time.monotonic(), key))
        count_status(key)

    stats.enter = recorded_enter
    stats.count_status = recorded_status
    return timeline


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- pipeline subprocesses ------------------------------------------------------------------


def write_config(path: Path, **settings: Any) -> Path:
    """A YAML config with settings the command line has no flag for."""
    path.write_text(yaml.safe_dump({"backend": "mistral", **settings}), encoding="utf-8")
    return path


@dataclass
class Child:
    """A pipeline subprocess whose output goes to files (no pipe can fill up and block it)."""

    proc: asyncio.subprocess.Process
    log: Path
    started: float

    async def wait(self, timeout: float = 60) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


async def spawn(args: list[str], env: dict[str, str], log: Path, *, hooks: bool = False,
                max_file_size: int | None = None) -> Child:
    """Start `python -m pipeline <args>` (or this module's hooked CLI when `hooks`); with
    `max_file_size`, no file the child writes may grow past it (RLIMIT_FSIZE)."""
    module = "tests.faultkit" if hooks else "pipeline"
    limit = _limit_file_size(max_file_size) if max_file_size is not None else None
    with open(log, "ab") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args,
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=limit,
        )
    return Child(proc, log, time.monotonic())


async def run_to_end(args: list[str], env: dict[str, str], log: Path, timeout: float = 60,
                     *, hooks: bool = False, max_file_size: int | None = None,
                     ) -> tuple[int, str, float]:
    """Run a pipeline subprocess to its end: (exit code, its output, seconds)."""
    child = await spawn(args, env, log, hooks=hooks, max_file_size=max_file_size)
    try:
        code = await child.wait(timeout)
    finally:
        child.kill()
    return code, child.output(), time.monotonic() - child.started


# ---- disk full ------------------------------------------------------------------------------


def mount_tmpfs(folder: Path, size: int) -> bool:
    """Mount a tmpfs of `size` bytes on `folder` (as root); False when mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True, check=False,
    ).returncode == 0


def resize_tmpfs(folder: Path, size: int) -> None:
    """Give a mounted tmpfs more room, keeping its files."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[str]:
    """Make `folder` a file system of `size` bytes for this process: a real tmpfs when mount is
    allowed, else writes under it fail with ENOSPC once `size` bytes went there (a fault at the
    write)."""
    if mount_tmpfs(folder, size):
        try:
            yield "tmpfs"
        finally:
            unmount(folder)
        return
    used = [0]
    real_fdopen = os.fdopen
    root = str(folder.resolve())

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        fh = real_fdopen(fd, *args, **kwargs)
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(root + "/"):
                return _FullFile(fh, used, size)
        return fh

    os.fdopen = fdopen
    try:
        yield "injected ENOSPC"
    finally:
        os.fdopen = real_fdopen


def _limit_file_size(size: int) -> Callable[[], None]:
    """For a child: no file may grow past `size` bytes (writes fail with EFBIG, no SIGXFSZ)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


class _FullFile:
    """A file on a disk with `size` bytes in all: writes past that fail with ENOSPC."""

    def __init__(self, fh: Any, used: list[int], size: int) -> None:
        self._fh, self._used, self._size = fh, used, size

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        if self._used[0] + len(data) > self._size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._used[0] += len(data)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


# ---- hooks for a child process (python -m tests.faultkit <pipeline args>) ---------------------


def _spec(name: str) -> tuple[str, int] | None:
    value = os.environ.get(name, "")
    what, sep, count = value.rpartition(":")
    return (what, int(count)) if sep and count.isdigit() else None


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(target: tuple[str, int], matches: Callable[[str], bool]) -> Callable[[str], bool]:
    seen = [0]

    def reached(text: str) -> bool:
        if matches(text):
            seen[0] += 1
            return seen[0] >= target[1]
        return False

    return reached


def _arm_sql_kill(target: tuple[str, int]) -> None:
    reached = _counter(target, lambda sql: target[0] in sql)
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: _die() if reached(sql) else None)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp$")  # store.atomic_write: .<name>.tmp


def _arm_write_kill(target: tuple[str, int]) -> None:
    def is_output_temp(path: str) -> bool:
        match = _TMP_NAME.match(os.path.basename(path))
        return bool(match and match["name"].endswith(target[0]))

    reached = _counter(target, is_output_temp)
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        fh = real_fdopen(fd, *args, **kwargs)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return fh
        return _TornFile(fh) if reached(path) else fh

    os.fdopen = fdopen


class _TornFile:
    """Writes half of what it is given, makes sure it is on disk, then dies."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def __enter__(self) -> _TornFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        self._fh.write(data[: max(1, len(data) // 2)])
        self._fh.flush()
        os.fsync(self._fh.fileno())
        _die()
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def main(argv: list[str]) -> int:
    sql = _spec("FAULTKIT_KILL_AT_SQL")
    if sql:
        _arm_sql_kill(sql)
    write = _spec("FAULTKIT_KILL_IN_WRITE")
    if write:
        _arm_write_kill(write)
    from pipeline.commands.cli import main as pipeline_main

    return pipeline_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

