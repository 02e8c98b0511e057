"""The run caps glibc's malloc arenas (pipeline/malloc_arenas.py): threads that allocate share
two arenas instead of one each. Counted by glibc itself (`malloc_stats` lists every arena) in a
fresh interpreter whose eight threads each allocate, with and without the cap."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROGRAM = """
import ctypes, ctypes.util, sys, threading
from pipeline.malloc_arenas import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas()
held = []
started, allocated = threading.Barrier(8), threading.Barrier(8)
def work():  # all eight alive at once: none hands its arena on to the next by exiting
    started.wait()
    held.append([bytearray(100_000) for _ in range(10)])  # malloc, under the mmap threshold
    allocated.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.run([sys.executable, "-c", PROGRAM, mode], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return len(re.findall(r"^Arena \d+:", proc.stderr, re.MULTILINE))


def test_threads_share_two_arenas_when_capped() -> None:
    assert arenas("free") >= 8  # what glibc does unasked: an arena per allocating thread
    assert arenas("capped") == 2


@pytest.mark.parametrize(("name", "value"), [("MALLOC_ARENA_MAX", "4"),
                                           ("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")])
def test_an_operators_own_arena_setting_wins(monkeypatch, name: str, value: str) -> None:
    from pipeline.malloc_arenas import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv(name, value)
    assert limit_malloc_arenas() is False


RUN_PROGRAM = """
import ctypes, ctypes.util, sys
from pipeline.commands.cli import main
code = main(sys.argv[1:])
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
sys.exit(code)
"""


def arenas_after_a_run(tmp_path, env_extra: dict[str, str]) -> int:
    from tests.pdfgen import write_pdf

    inp, out = tmp_path / "in", tmp_path / "out"
    for n in range(6):
        write_pdf(inp / f"doc{n}.pdf", f"doc{n}", 3)
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    env.pop("MISTRAL_API_KEY", None)
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_PROGRAM, "run", "--backend", "local", "--rps", "0",
         "--input", str(inp), "--output", str(out), "--progress", "off", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.rglob("*.json"))) >= 6
    return len(re.findall(r"^Arena \d+:", proc.stderr, re.MULTILINE))


def test_a_run_caps_the_arenas_of_its_threads(tmp_path) -> None:
    """`pipeline run` itself sets the cap before its threads start: after a run whose store,
    manifest and reading threads all allocated, glibc lists two arenas. With the operator's
    own MALLOC_ARENA_MAX=8 (the cap is not set) the same run lists more."""
    assert arenas_after_a_run(tmp_path / "capped", {}) == 2
    assert arenas_after_a_run(tmp_path / "operator", {"MALLOC_ARENA_MAX": "8"}) > 2


TRIM_PROGRAM = """
import asyncio
from pipeline.gc_pacing import resident_bytes
from pipeline.malloc_arenas import FreePageTrim
# 60 MB of 30 KB blocks (above Python's small-object allocator: glibc's heap), one in ten kept:
# the freed nine sit between live blocks, where shrinking the heap's top cannot reach them.
blocks = [bytes(30_000) + bytes([i % 256]) for i in range(2_000)]
kept = blocks[::10]
del blocks
before = resident_bytes()
async def main():
    trim = FreePageTrim(every=0.05)
    task = asyncio.create_task(trim.run())
    while trim.trims == 0:
        await asyncio.sleep(0.01)
    task.cancel()
asyncio.run(main())
print(before // 2**20, resident_bytes() // 2**20)
"""


def test_freed_pages_between_live_blocks_go_back_to_the_system() -> None:
    """What a run at R = 200 does to glibc's heap, in miniature: with `FreePageTrim` running,
    the freed blocks' pages leave the resident set though live blocks lie between them."""
    proc = subprocess.run([sys.executable, "-c", TRIM_PROGRAM], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    before, after = map(int, proc.stdout.split())
    assert before >= 60
    assert after < before - 40, (before, after)


async def test_the_trim_runs_every_so_often_off_the_loop_until_cancelled() -> None:
    import asyncio
    import threading

    from pipeline.malloc_arenas import FreePageTrim

    calls: list[tuple[int, str]] = []

    def trim(pad: int) -> int:
        calls.append((pad, threading.current_thread().name))
        return 1

    task = asyncio.create_task(FreePageTrim(every=0.02, trim=trim).run())
    for _ in range(500):  # a loaded machine may be slow to run the thread: wait for three
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    count = len(calls)
    assert count >= 3
    assert all(pad == 0 and name != threading.current_thread().name for pad, name in calls)
    await asyncio.sleep(0.05)
    assert len(calls) == count  # cancelled: no more
