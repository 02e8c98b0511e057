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
