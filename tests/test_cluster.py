"""The local engine on a real Dask cluster: `dask scheduler` and `dask worker` processes on
127.0.0.1 (tests/dask_cluster.py), the real pipeline as a subprocess, real SIGKILLs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import distributed  # noqa: E402, F401  (the dev extra installs it: a missing one fails, not skips)
from reportlab.lib.pagesizes import A6

from pipeline.backends.local import cluster as dask_cluster
from pipeline.backends.local.cluster import CapacityGate, WorkerCheck, worker_problems
from tests.dask_cluster import ROOT, LocalCluster, free_port, local_cluster
from tests.local_fixtures import PARAGRAPHS, TITLES, image_pdf, prose_page, render

DPI = 100  # small scans (A6 at 100 dpi): a page reads in about 0.3 s


def scanned_documents(folder: Path, count: int, pages: int) -> None:
    """`count` image-only PDFs of `pages` pages each, every page different."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(count):
        images = [
            render(prose_page(f"{TITLES[(d + p) % len(TITLES)]} {d}-{p}", [PARAGRAPHS[(d + p) % 4]],
                              pagesize=A6, font_size=10, margin=20).pdf, DPI)
            for p in range(pages)
        ]
        (folder / f"doc{d:02}.pdf").write_bytes(image_pdf(images, DPI))


def pipeline_cmd(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", "--backend", "local", "--input", str(inp),
            "--output", str(out), "--progress", "json", "--log-level", "info", *extra]


def run_pipeline(inp: Path, out: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pipeline_cmd(inp, out, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def page_texts(out: Path) -> dict[str, list[str]]:
    """Each output document's pages' markdown, asserting one page per index, in order."""
    texts = {}
    for path in sorted(out.glob("*.pdf.json")):
        doc = json.loads(path.read_text())
        indexes = [p["index"] for p in doc["pages"]]
        assert indexes == list(range(len(indexes))), f"{path.name}: pages {indexes}"
        texts[path.name] = [p["markdown"] for p in doc["pages"]]
    return texts


T = TypeVar("T")


def run_while(cl: LocalCluster, inp: Path, out: Path, during: Callable[[], T],
              timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], T]:
    """Run the pipeline on the cluster; call `during()` while it runs (to kill or add workers);
    wait for the run to end. The run is killed if anything fails."""
    run = subprocess.Popen(pipeline_cmd(inp, out, "--cluster", cl.address), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = during()
        stdout, stderr = run.communicate(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr), seen


def test_a_worker_killed_mid_run_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    scanned_documents(inp, 6, 2)
    with local_cluster(tmp_path / "cluster", workers=2) as cl:
        def kill_w2() -> None:
            cl.wait_until_reading("w2")  # a page is on w2 now
            cl.kill_worker("w2")

        run, _ = run_while(cl, inp, tmp_path / "out", kill_w2, timeout=60)
        stdout, stderr = run.stdout, run.stderr
    assert run.returncode == 0, stdout + stderr
    done_in_cluster = page_texts(tmp_path / "out")
    assert len(done_in_cluster) == 6
    assert all(len(pages) == 2 for pages in done_in_cluster.values())
    # The same documents through this machine's process pool read exactly the same.
    local = run_pipeline(inp, tmp_path / "local")
    assert local.returncode == 0, local.stderr
    assert page_texts(tmp_path / "local") == done_in_cluster
    for path in (tmp_path / "out").glob("*.pdf.md"):
        markers = [line for line in path.read_text().splitlines() if line.startswith("<!-- page")]
        assert len(markers) == len(set(markers)) == 2, (path.name, markers)
    report = json.loads(next((tmp_path / "out/.ocr-pipeline/runs").glob("*.json")).read_text())
    assert report["documents_done"] == 6 and report["pages_done"] == 12
    assert report["cluster"] == cl.address and report["workers"] == 2
    assert f"cluster: {cl.address}, 2 workers at most" in stdout
    assert "ocr_pipeline_workers 1.0" in (tmp_path / "out/.ocr-pipeline/metrics.prom").read_text()


def test_an_unreachable_scheduler_stops_the_run_with_exit_3_naming_it(tmp_path: Path) -> None:
    scanned_documents(tmp_path / "in", 1, 1)
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_pipeline(tmp_path / "in", tmp_path / "out", "--cluster", address)
    assert result.returncode == 3, result.stderr
    assert f"cannot reach the Dask scheduler at {address}" in result.stderr
    assert not list((tmp_path / "out").glob("*.json"))


def test_workers_without_the_language_or_with_another_version_stop_the_run_before_any_work(
    tmp_path: Path,
) -> None:
    scanned_documents(tmp_path / "in", 1, 1)
    empty = tmp_path / "no-models"
    empty.mkdir()
    other_version = tmp_path / "other_version.py"
    other_version.write_text("import pipeline\npipeline.__version__ = '0.0.0-other'\n")
    with local_cluster(tmp_path / "cluster", workers=0) as cl:
        cl.start_worker("good")
        cl.start_worker("nolang", env={"TESSDATA_PREFIX": str(empty)})
        cl.start_worker("oldver", extra=["--preload", str(other_version)])
        cl.wait_for_workers(3)
        result = run_pipeline(tmp_path / "in", tmp_path / "out", "--cluster", cl.address)
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "worker nolang (tcp://127.0.0.1:" in message
    assert f"lacks eng.traineddata for local.language 'eng' in {empty} (from TESSDATA_PREFIX)" in message
    assert "worker oldver (tcp://127.0.0.1:" in message and "runs ocr-pipeline 0.0.0-other" in message
    assert "worker good" not in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


async def test_tasks_in_flight_follow_the_cluster_threads_as_workers_join(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "cluster", workers=1) as cl:
        executor = await asyncio.to_thread(dask_cluster.connect, cl.address, "eng", None)
        most = {"before": 0, "after": 0}
        phase = "before"
        tasks: list[asyncio.Task[object]] = []

        async def feed_and_watch() -> None:
            """Always more work waiting than the cluster can take; note the most in flight."""
            while True:
                if sum(not t.done() for t in tasks) < 12:
                    tasks.append(asyncio.create_task(executor.run(time.sleep, 0.1)))
                most[phase] = max(most[phase], executor.gate.held)
                await asyncio.sleep(0.01)

        feeder = asyncio.create_task(feed_and_watch())
        try:
            await asyncio.sleep(1.0)
            assert executor.workers == 1 and executor.capacity == 1
            phase = "after"
            cl.start_worker("late")
            deadline = time.monotonic() + 30
            while executor.workers < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(dask_cluster.REFRESH_S * 2)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, *tasks, return_exceptions=True)
            await executor.close()
    assert most["before"] == 2  # 2 tasks per thread, 1 thread
    assert most["after"] == 4  # the late worker's thread doubled it
    assert executor.peak_workers == 2


async def test_the_capacity_gate_shrinks_without_cancelling_holders() -> None:
    limit = [3]
    gate = CapacityGate(lambda: limit[0])
    for _ in range(3):
        await gate.acquire()
    limit[0] = 1
    gate.release()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # 2 still held, the limit is 1
    gate.release()
    gate.release()
    await asyncio.wait_for(waiter, 2)
    assert gate.held == 1


def test_worker_problems_name_each_worker_and_what_it_lacks() -> None:
    checks = [
        WorkerCheck("b (tcp://h:2)", "0.1.0", ("deu",), "/x (from TESSDATA_PREFIX)", None),
        WorkerCheck("a (tcp://h:1)", "0.1.0", (), "/y", None),
        WorkerCheck("c (tcp://h:3)", "0.2.0", (), "/y", None),
        WorkerCheck("d (tcp://h:4)", None, (), None, "cannot run the pipeline's worker code: boom"),
    ]
    assert worker_problems(checks, "0.1.0", "eng+deu") == [
        "worker b (tcp://h:2): lacks deu.traineddata for local.language 'eng+deu' in /x (from"
        " TESSDATA_PREFIX)",
        "worker c (tcp://h:3): runs ocr-pipeline 0.2.0, this client 0.1.0",
        "worker d (tcp://h:4): cannot run the pipeline's worker code: boom",
    ]


def test_a_run_without_a_cluster_imports_no_dask(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in/text.pdf").write_bytes(prose_page("Born digital", PARAGRAPHS[:1]).pdf)
    code = (
        "import sys\n"
        "from pipeline.commands.cli import main\n"
        f"rc = main(['run', '--backend', 'local', '--input', {str(tmp_path / 'in')!r}, '--output',"
        f" {str(tmp_path / 'out')!r}, '--progress', 'off'])\n"
        "print('RC', rc, sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**os.environ})
    assert "RC 0 []" in result.stdout, result.stdout + result.stderr


def test_a_cluster_with_a_hosted_backend_is_a_config_error_naming_why(tmp_path: Path) -> None:
    """The cluster runs only the local engine: with mistral or azure it would sit unused."""
    scanned_documents(tmp_path / "in", 1, 1)
    env = {**os.environ, "MISTRAL_API_KEY": "k", "AZURE_API_KEY": "k"}
    flag = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--backend", "mistral", "--input",
         str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--cluster", "tcp://127.0.0.1:1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert flag.returncode == 2, flag.stderr
    assert "command line: --cluster: a Dask cluster runs only the local engine" in flag.stderr
    assert "backend 'mistral'" in flag.stderr
    config = tmp_path / "azure.yaml"
    config.write_text("backend: azure\nendpoint: https://ocr.example.org\n"
                      "local:\n  cluster: tcp://127.0.0.1:1\n")
    file = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input",
         str(tmp_path / "in"), "--output", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert file.returncode == 2, file.stderr
    assert f"{config}: key 'local.cluster': a Dask cluster runs only the local engine" in file.stderr
    assert "backend 'azure'" in file.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def _late_worker_executed(address: str, name: str) -> int:
    """Tasks the worker called `name` has executed (its own count, asked through the scheduler)."""
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        target = next(a for a, w in workers.items() if w.get("name") == name)
        return client.run(lambda dask_worker: dask_worker.state.executed_count,
                          workers=[target])[target]


def _json_lines(stderr: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def test_a_worker_joining_mid_run_gets_pages_and_raises_the_in_flight_ceiling(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    scanned_documents(inp, 24, 2)
    with local_cluster(tmp_path / "cluster", workers=1) as cl:
        def add_late() -> list[str]:
            cl.wait_until_reading("w1")  # the run is under way on one worker
            cl.start_worker("late")
            return cl.wait_until_reading("late", timeout=60)  # the scheduler gave it a page

        run, late_keys = run_while(cl, inp, tmp_path / "out", add_late)
        stdout, stderr = run.stdout, run.stderr
        late_executed = _late_worker_executed(cl.address, "late")
    assert run.returncode == 0, stdout + stderr
    assert any(k.startswith("ocr_pdf_page") for k in late_keys)
    assert late_executed >= 1
    # Every document done exactly once: 24 outputs, each page once and in order, 48 pages.
    done = page_texts(tmp_path / "out")
    assert len(done) == 24 and all(len(pages) == 2 for pages in done.values())
    for path in (tmp_path / "out").glob("*.pdf.md"):
        markers = [line for line in path.read_text().splitlines() if line.startswith("<!-- page")]
        assert len(markers) == len(set(markers)) == 2, (path.name, markers)
    report = json.loads(next((tmp_path / "out/.ocr-pipeline/runs").glob("*.json")).read_text())
    assert (report["documents_done"], report["pages_done"], report["documents_failed"]) == (24, 48, 0)
    assert report["workers"] == 2
    # The in-flight ceiling followed the cluster: 2 tasks per thread, 1 thread, then 2.
    sizes = [(e["workers"], e["in_flight_cap"]) for e in _json_lines(stderr)
             if e.get("event") == "cluster size"]
    assert sizes[0] == (1, 2) and (2, 4) in sizes, sizes
    assert f"cluster: {cl.address}, 2 workers at most" in stdout


def test_a_worker_joining_mid_run_without_the_language_gets_no_task(tmp_path: Path) -> None:
    """A worker that joins mid-run is checked like the first ones: one lacking the Tesseract
    model is named in a warning and gets no task (not a page read with no model), and the run
    finishes on the good worker."""
    inp = tmp_path / "in"
    scanned_documents(inp, 16, 2)
    empty = tmp_path / "no-models"
    empty.mkdir()
    with local_cluster(tmp_path / "cluster", workers=1) as cl:
        def add_nolang() -> None:
            cl.wait_until_reading("w1")
            cl.start_worker("nolang", env={"TESSDATA_PREFIX": str(empty)})

        run, _ = run_while(cl, inp, tmp_path / "out", add_nolang, timeout=180)
        stdout, stderr = run.stdout, run.stderr
        refused_executed = _late_worker_executed(cl.address, "nolang")
    assert run.returncode == 0, stdout + stderr
    assert refused_executed == 0
    refused = [e for e in _json_lines(stderr) if e.get("event") == "cluster worker refused"]
    assert refused and "nolang (tcp://127.0.0.1:" in str(refused[0]["worker"])
    assert "lacks eng.traineddata" in str(refused[0]["why"])
    done = page_texts(tmp_path / "out")
    assert len(done) == 16 and all(len(pages) == 2 for pages in done.values())
