"""A real Dask cluster on 127.0.0.1 for tests and benchmarks: `dask scheduler` and `dask worker`
processes (each worker 1 process x 1 thread, no dashboard, free ports), each in its own process
group so a test can SIGKILL a whole worker (nanny and its process) and always clean up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASK = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
DASK_WORKER = [sys.executable, "-m", "distributed.cli.dask_worker"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LocalCluster:
    """The processes of one test cluster; `stop()` kills every one still alive."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        try:
            return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=full_env, start_new_session=True)
        finally:
            log.close()

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", [
            *DASK, "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard",
        ], None)
        deadline = time.monotonic() + 20
        while not _listening(self.port):
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start: "
                                   + (self.logs / "scheduler.log").read_text(errors="replace"))
            time.sleep(0.05)

    def start_worker(self, name: str, env: dict[str, str] | None = None,
                     extra: list[str] | None = None) -> None:
        self.workers[name] = self._spawn(name, [
            *DASK_WORKER, self.address, "--name", name, "--nworkers", "1", "--nthreads", "1",
            "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0",
            "--local-directory", str(self.logs / f"{name}-space"), *(extra or []),
        ], env)

    def wait_for_workers(self, count: int, timeout: float = 30.0) -> None:
        """Until the scheduler has `count` workers (asked through a short-lived client)."""
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            client.wait_for_workers(count, timeout=timeout)

    def wait_until_reading(self, name: str, prefix: str = "ocr_pdf_page", timeout: float = 30.0) -> list[str]:
        """Until the worker called `name` has a task whose key starts with `prefix` (the
        scheduler's view); its keys then."""
        from distributed import Client

        with Client(self.address, timeout=10, set_as_default=False) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                workers = client.scheduler_info(n_workers=-1)["workers"]
                address = next((a for a, w in workers.items() if w.get("name") == name), None)
                if address:
                    keys = [str(k) for k in client.processing(workers=[address]).get(address, [])]
                    if any(k.startswith(prefix) for k in keys):
                        return keys
                time.sleep(0.02)
        raise TimeoutError(f"worker {name} got no {prefix} task in {timeout} s")

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group (its nanny and its worker process)."""
        proc = self.workers[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        procs = [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # Whatever is left of the group (a worker process whose nanny is gone) goes too.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(5)


@contextmanager
def local_cluster(logs: Path, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A scheduler and `workers` healthy workers, all killed on exit whatever happened."""
    logs.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(logs)
    try:
        cluster.start_scheduler()
        for n in range(workers):
            cluster.start_worker(f"w{n + 1}", env)
        if workers:
            cluster.wait_for_workers(workers)
        yield cluster
    finally:
        cluster.stop()
