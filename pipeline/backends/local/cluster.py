"""The local engine's page work on a Dask cluster (`run --cluster tcp://HOST:8786`).

Only this module imports `distributed`, and only when a cluster is configured. The run itself
(walk, plan, manifest, outputs) stays on the client; each chunk's bytes go to the cluster once
(a `hold` task that the chunk's page tasks depend on, recomputed if its worker dies) and each
page's answer comes back as plain data. Workers need no access to the input or output folders.

- Before any work: the scheduler must answer (else FatalError, exit 3, naming the address) and
  every worker must run this pipeline's version and have the configured Tesseract languages
  (else ConfigError, exit 2, naming each worker and what it lacks).
- Workers that join mid-run are checked the same way before they get any task: tasks are
  submitted only to the workers that passed (`workers=`, no others allowed), and a worker that
  fails the check is named in a warning and left idle; the run goes on.
- Backpressure: tasks in flight are capped at IN_FLIGHT_PER_THREAD x the admitted workers'
  threads, read again every REFRESH_S, so the cap grows when workers join and shrinks when they
  leave.
- A worker killed mid-task: the scheduler runs its tasks elsewhere (`retries=` also re-runs a
  task that raised); each page's answer is one future, so a page is never counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.backends.local import worker
from pipeline.errors import Category, ConfigError, FatalError, RetryableError
from pipeline.logsetup import get_logger

IN_FLIGHT_PER_THREAD = 2  # one task running per thread, one waiting so no thread idles
TASK_RETRIES = 2  # a task that raised runs again (a lost worker is the scheduler's business)
CONNECT_TIMEOUT_S = 10.0
WORKERS_TIMEOUT_S = 30.0  # a cluster with no worker at start: FatalError after this
REFRESH_S = 1.0


@dataclass(frozen=True)
class WorkerCheck:
    """One worker's answer to `worker.probe`, or why it could not answer."""

    address: str
    version: str | None
    missing: tuple[str, ...]
    tessdata: str | None
    problem: str | None


def worker_problems(checks: list[WorkerCheck], version: str, language: str) -> list[str]:
    """What is wrong with each worker, one line per worker, in address order."""
    lines = []
    for c in sorted(checks, key=lambda c: c.address):
        why = []
        if c.problem:
            why.append(c.problem)
        elif c.version != version:
            why.append(f"runs ocr-pipeline {c.version}, this client {version}")
        if c.missing:
            names = ", ".join(f"{lang}.traineddata" for lang in c.missing)
            why.append(f"lacks {names} for local.language {language!r} in {c.tessdata}")
        if why:
            lines.append(f"worker {c.address}: " + "; ".join(why))
    return lines


def _named(address: str, name: Any) -> str:
    """`w2 (tcp://10.0.0.5:40123)`: the name given to `dask worker --name`, and where it is."""
    return f"{name} ({address})" if name not in (None, "", address) else address


def _check(address: str, answer: Any) -> WorkerCheck:
    if isinstance(answer, BaseException):
        return WorkerCheck(address, None, (), None,
                           f"cannot run the pipeline's worker code: {type(answer).__name__}: {answer}")
    return WorkerCheck(address, answer.get("version"), tuple(answer.get("missing") or ()),
                       answer.get("tessdata"), answer.get("problem"))


class CapacityGate:
    """At most `limit()` holders at once, the limit read again whenever a holder waits."""

    def __init__(self, limit: Any) -> None:
        self.limit = limit
        self.held = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while self.held >= max(1, self.limit()):
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REFRESH_S)
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._changed.set()


class DaskExecutor:
    """Runs worker functions as Dask tasks through a synchronous `distributed.Client` (its own
    IO thread); results are handed to the run's event loop as the futures finish."""

    def __init__(self, client: Any, address: str, language: str = "eng",
                 tessdata_path: str | None = None, checked: frozenset[str] = frozenset()) -> None:
        self.client = client
        self.address = address
        self.language = language
        self.tessdata_path = tessdata_path
        self._threads = 0
        self._workers = 0
        self._refreshed = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self.gate = CapacityGate(lambda: IN_FLIGHT_PER_THREAD * self._threads)
        self.peak_workers = 0
        # Worker addresses that passed the check (tasks go only there) and those that failed.
        self.admitted: frozenset[str] = checked  # passed the check in `connect`
        self.refused: frozenset[str] = frozenset()
        self._update(client.scheduler_info(n_workers=-1))

    # -- cluster size --------------------------------------------------------------------------
    def _update(self, info: dict[str, Any]) -> None:
        """Take in the scheduler's view: workers gone are dropped, workers new are checked
        (version, languages) before they may get a task. Runs in a thread (it may call the
        cluster); the sets are replaced whole, so the loop always reads a consistent one."""
        workers: dict[str, Any] = info.get("workers") or {}
        present = set(workers)
        admitted, refused = self.admitted & present, self.refused & present
        new = present - admitted - refused
        if new:
            ok, bad = self._check_new(new, workers)
            admitted |= ok
            refused |= bad
        threads = sum(int(workers[a].get("nthreads") or 0) for a in admitted)
        if (threads, len(admitted)) != (self._threads, self._workers):
            # The operator sees the cluster grow or shrink, and the in-flight ceiling follow.
            get_logger().info("cluster size", scheduler=self.address, workers=len(admitted),
                              threads=threads, in_flight_cap=IN_FLIGHT_PER_THREAD * threads)
        self.admitted, self.refused = frozenset(admitted), frozenset(refused)
        self._threads, self._workers = threads, len(admitted)
        self.peak_workers = max(self.peak_workers, self._workers)
        self._refreshed = time.monotonic()

    def _check_new(self, new: set[str], workers: dict[str, Any]) -> tuple[set[str], set[str]]:
        from pipeline import __version__

        answers = self.client.run(worker.probe, self.language, self.tessdata_path,
                                  workers=sorted(new), on_error="return")
        ok, bad = set(), set()
        for addr in new:
            name = _named(addr, workers[addr].get("name"))
            if addr not in answers:  # gone again before it answered
                continue
            problems = worker_problems([_check(name, answers[addr])], __version__, self.language)
            if problems:
                bad.add(addr)
                get_logger().warning("cluster worker refused", worker=name, why=problems[0],
                                     message="it gets no task; install the same ocr-pipeline"
                                             " version and the Tesseract models on it")
            else:
                ok.add(addr)
        return ok, bad

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                await asyncio.to_thread(self._refresh)

    def _refresh(self) -> None:
        self._update(self.client.scheduler_info(n_workers=-1))

    @property
    def capacity(self) -> int:
        return max(1, self._threads)

    @property
    def workers(self) -> int:
        return self._workers

    # -- work ----------------------------------------------------------------------------------
    def _placement(self) -> dict[str, Any]:
        """Tasks go only to admitted workers (none admitted yet: anywhere is no better)."""
        return {"workers": sorted(self.admitted), "allow_other_workers": False} if self.admitted \
            else {}

    def share(self, data: bytes) -> Any:
        return self.client.submit(worker.hold, data, pure=False, retries=TASK_RETRIES,
                                  key=f"hold-{uuid.uuid4().hex}", **self._placement())

    def unshare(self, handle: Any) -> None:
        handle.release()

    async def run(self, fn: Any, *args: Any) -> worker.WorkerOutcome:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        await self.gate.acquire()
        try:
            return await self._submit_and_wait(fn, args)
        finally:
            self.gate.release()

    async def _submit_and_wait(self, fn: Any, args: tuple[Any, ...]) -> worker.WorkerOutcome:
        from distributed.scheduler import KilledWorker

        loop = asyncio.get_running_loop()
        settled: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if not settled.done():
                settled.set_result((value, error))

        def on_done(fut: Any) -> None:  # in Dask's callback thread
            try:
                value, error = fut.result(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the loop as data
                value, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, value, error)

        try:
            future = self.client.submit(fn, *args, pure=False, retries=TASK_RETRIES,
                                        key=f"{fn.__name__}-{uuid.uuid4().hex}",
                                        **self._placement())
        except (OSError, RuntimeError) as exc:
            raise RetryableError(f"cannot submit work to the Dask scheduler at {self.address}: "
                                 f"{exc}", category=Category.BACKEND) from exc
        future.add_done_callback(on_done)
        try:
            value, error = await settled
        finally:
            future.release()  # cancelled or done: the cluster may forget it
        if error is None:
            return value
        if isinstance(error, KilledWorker):
            raise RetryableError(f"the Dask workers running a page died repeatedly ({error})",
                                 category=Category.BACKEND) from error
        if isinstance(error, (OSError, TimeoutError)) or type(error).__name__.endswith("CancelledError"):
            raise RetryableError(f"a page's task on the Dask cluster at {self.address} was lost:"
                                 f" {type(error).__name__}: {error}", category=Category.BACKEND) from error
        raise error

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await asyncio.to_thread(self.client.close)


def _reachable(address: str) -> None:
    """A TCP scheduler that refuses the connection is said at once (Dask's client would retry
    until its timeout); other schemes (tls://, ...) are left to the client."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp" or ":" not in rest:
        return
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except ValueError:
        return  # not a port number: the client says what is wrong with the address
    except OSError as exc:
        raise FatalError(
            f"cannot reach the Dask scheduler at {address}: {exc.strerror or exc}",
            hint="is `dask scheduler` running there, and the port open from this machine?",
        ) from None


def connect(address: str, language: str, tessdata_path: str | None) -> DaskExecutor:
    """Connect to the scheduler and check every worker, before any work.

    FatalError (exit 3) when the scheduler does not answer or has no worker; ConfigError (exit 2)
    naming each worker with another pipeline version or a missing language.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            f"--cluster {address} needs Dask's distributed package on this machine",
            hint="pip install 'ocr-pipeline[cluster]'",
        ) from None
    from pipeline import __version__

    _reachable(address)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise FatalError(
            f"cannot reach the Dask scheduler at {address}: {type(exc).__name__}: {exc}",
            hint="is `dask scheduler` running there, and the port open from this machine?",
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            raise FatalError(
                f"the Dask scheduler at {address} has no worker after {WORKERS_TIMEOUT_S:g} s",
                hint="start workers with `dask worker " + address + "`",
            ) from exc
        answers = client.run(worker.probe, language, tessdata_path, on_error="return")
        names = {addr: info.get("name") for addr, info in
                 client.scheduler_info(n_workers=-1).get("workers", {}).items()}
        checks = [_check(_named(addr, names.get(addr)), answer) for addr, answer in answers.items()]
        problems = worker_problems(checks, __version__, language)
        if problems:
            raise ConfigError(
                f"Dask workers at {address} cannot run this job: " + " | ".join(problems),
                hint="install the same ocr-pipeline version and the Tesseract models on every"
                " worker (e.g. pip install tessdata.fast-<lang>), or point TESSDATA_PREFIX at them",
            )
        return DaskExecutor(client, address, language, tessdata_path, frozenset(answers))
    except BaseException:
        client.close()
        raise
