"""How long the running pipeline's threads wait for a CPU: a probe to run beside a benchmark.

Linux only (`/proc/<pid>/task/<tid>/schedstat`: time on a CPU, time runnable but waiting in the
run queue, and the number of times a thread was scheduled). It finds the `pipeline run`
process, its PDF probe process and the fake server, samples them twice `seconds` apart and
prints, per thread that did anything, the share of wall time on a CPU and waiting for one.
An event loop that waits for a CPU a quarter of the time is short of cores, not of its own
core: docs/performance.md, "Where the last 2-3% go".

    .venv/bin/python benchmarks/bench_strict_matrix.py --cells R200-L2-p50-hoff-rps &
    sleep 18; .venv/bin/python benchmarks/thread_waits.py 15
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

Sample = dict[int, tuple[int, int, int]]  # thread id -> (ns on a CPU, ns waiting, slices)


def find_processes() -> dict[str, int]:
    """The run, its probe process and the fake server, by their command lines."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if "-S" in words:  # the benchmarks' rusage wrapper, not the run
            continue
        if words[1:4] == ["-m", "pipeline", "run"]:
            found["run"] = int(entry.name)
        elif words[1:4] == ["-m", "pipeline", "fake-server"]:
            found["server"] = int(entry.name)
        elif "--multiprocessing-fork" in words:
            found["probe"] = int(entry.name)
    return found


def sample(pid: int) -> Sample:
    threads: Sample = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, waiting, slices = map(int, (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        threads[int(task.name)] = (on_cpu, waiting, slices)
    return threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("seconds", type=float, nargs="?", default=15.0)
    args = ap.parse_args()
    processes = find_processes()
    if "run" not in processes:
        raise SystemExit("no `python -m pipeline run` is running")
    before = {name: sample(pid) for name, pid in processes.items()}
    time.sleep(args.seconds)
    print(f"{'process':8s} {'thread':>8s} {'on CPU':>7s} {'waiting':>8s} {'slices/s':>9s}")
    for name, pid in processes.items():
        if not os.path.exists(f"/proc/{pid}"):
            continue
        for tid, (on_cpu, waiting, slices) in sorted(sample(pid).items()):
            cpu0, wait0, slices0 = before[name].get(tid, (0, 0, 0))
            share_cpu = (on_cpu - cpu0) / 1e9 / args.seconds
            share_wait = (waiting - wait0) / 1e9 / args.seconds
            if share_cpu < 0.005 and share_wait < 0.005:
                continue
            label = f"{tid}{'*' if tid == pid else ''}"
            print(f"{name:8s} {label:>8s} {share_cpu:7.3f} {share_wait:8.3f}"
                  f" {(slices - slices0) / args.seconds:9.0f}")
    print("(* the process's main thread: the run's event loop; shares of wall time)")


if __name__ == "__main__":
    main()
