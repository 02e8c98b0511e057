"""Each document's `source.batch.jobs` names exactly the jobs that answered its chunks, whether the
answers arrive while the run waits or are collected by a later run (--no-wait first). The run
looks the jobs up a page of documents at a time (run/batch_run.py `_with_jobs`) instead of keeping a map of
the whole output; these tests hold the notes to the fake server's own record of its jobs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import pipeline_env
from tests.faultkit import assert_accounted, make_docs, run_to_end
from tests.test_batch_mode import batch_args, write_batch_config

# One worker queues the chunks in path order, 2 pages per request, 3 requests per job: c.pdf's
# two chunks land in different jobs (a, b, c 1-2 | c 3, d/e, f).
DOCS = {"a.pdf": 1, "b.pdf": 1, "c.pdf": 3, "d/e.pdf": 2, "f.pdf": 1}


def jobs_by_document(fake) -> dict[str, set[str]]:
    """Document sha256 -> the fake's jobs whose input lines were chunks of it."""
    found: dict[str, set[str]] = {}
    for job in fake.jobs.values():
        for file_id in job.input_files:
            for raw in fake.store.files[file_id].data.splitlines():
                sha = json.loads(raw)["custom_id"].split(".")[1]
                found.setdefault(sha, set()).add(job.id)
    return found


def assert_source_names_the_jobs(inp: Path, out: Path, fake) -> None:
    expected = jobs_by_document(fake)
    assert [len(jobs) for jobs in expected.values()].count(2) == 1, expected
    for rel in DOCS:
        sha = hashlib.sha256((inp / rel).read_bytes()).hexdigest()
        source = json.loads((out / f"{rel}.json").read_text())["source"]
        assert source["batch"]["jobs"] == sorted(expected[sha]), rel


def setup(tmp_path: Path, url: str) -> tuple[Path, Path, list[str]]:
    """DOCS in `in/`, and the run's arguments: one worker, 3 requests per job."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    config = write_batch_config(tmp_path / "c.yaml", max_requests_per_job=3)
    return inp, out, batch_args(inp, out, url, "--config", str(config), "--workers", "1")


async def test_source_names_the_jobs_that_answered_while_the_run_waited(tmp_path: Path,
                                                                       fake_server) -> None:
    server = await fake_server()
    inp, out, args = setup(tmp_path, server.url)
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "run.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert len(batch_of(server).jobs) == 2
    assert_source_names_the_jobs(inp, out, batch_of(server))


async def test_source_names_the_jobs_collected_by_a_later_run(tmp_path: Path,
                                                              fake_server) -> None:
    server = await fake_server()
    fake = batch_of(server)
    fake.behaviour.hold = True
    inp, out, args = setup(tmp_path, server.url)
    code, output, _ = await run_to_end([*args, "--no-wait"], pipeline_env(), tmp_path / "1.log")
    assert code == ExitCode.OK, output
    assert not list(out.glob("*.json"))
    fake.behaviour.hold = False
    code, output, _ = await run_to_end(args, pipeline_env(), tmp_path / "2.log")
    assert code == ExitCode.OK, output
    assert_accounted(out, DOCS)
    assert fake.jobs_created == 2
    assert_source_names_the_jobs(inp, out, fake)
