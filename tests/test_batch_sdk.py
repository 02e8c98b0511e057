"""The official `mistralai` SDK's batch calls work against the fake server (files.upload,
batch.jobs.create / get / list, files.download), and content dedup and sync-identical outputs of
a batch run (docs/batch.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from pathlib import Path

import mistralai.client as mistralai  # noqa: E402  (the dev extra installs it: a missing SDK fails)

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import TEST_KEY, pipeline_env, run_args
from tests.faultkit import assert_accounted, make_docs, output_files, run_to_end
from tests.pdfgen import write_pdf
from tests.test_batch_mode import DOCS, FAST, batch_args, run_report, write_batch_config


def sdk_round_trip(url: str, pdf: bytes) -> tuple[dict, list[dict]]:
    """What a user of the SDK does: upload a JSONL, create a job, poll it, download the output."""
    client = mistralai.Mistral(api_key=TEST_KEY, server_url=url)
    line = {"custom_id": "doc-1", "body": {"document": {
        "type": "document_url",
        "document_url": "data:application/pdf;base64," + base64.b64encode(pdf).decode()}}}
    uploaded = client.files.upload(file={"file_name": "requests.jsonl",
                                         "content": (json.dumps(line) + "\n").encode()},
                                   purpose="batch")
    job = client.batch.jobs.create(input_files=[uploaded.id], endpoint="/v1/ocr",
                                   model="mistral-ocr-latest", metadata={"who": "sdk-test"})
    deadline = time.monotonic() + 10
    while job.status not in ("SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
        job = client.batch.jobs.get(job_id=job.id)
    listed = client.batch.jobs.list(metadata={"who": "sdk-test"})
    assert [j.id for j in listed.data] == [job.id]
    assert client.batch.jobs.list(metadata={"who": "someone-else"}).data == []
    content = client.files.download(file_id=job.output_file).read()
    return job.model_dump(), [json.loads(x) for x in content.splitlines()]


async def test_official_sdk_batch_calls_work_against_the_fake_server(tmp_path: Path,
                                                                     fake_server) -> None:
    server = await fake_server(api_key=TEST_KEY)
    write_pdf(tmp_path / "x.pdf", "x.pdf", 2)
    job, lines = await asyncio.to_thread(sdk_round_trip, server.url,
                                         (tmp_path / "x.pdf").read_bytes())
    assert job["status"] == "SUCCESS" and job["total_requests"] == 1
    assert job["succeeded_requests"] == 1 and job["error_file"] is None
    assert len(lines) == 1 and lines[0]["custom_id"] == "doc-1"
    assert lines[0]["response"]["status_code"] == 200
    assert len(lines[0]["response"]["body"]["pages"]) == 2
    assert batch_of(server).jobs_created == 1


async def test_the_same_content_in_two_paths_is_one_request(tmp_path: Path, fake_server) -> None:
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    make_docs(inp, DOCS)
    shutil.copy(inp / "a.pdf", inp / "copy-of-a.pdf")  # same bytes, another path
    config = write_batch_config(tmp_path / "c.yaml")
    code, output, _ = await run_to_end(batch_args(inp, out, server.url, "--config", str(config)),
                                       pipeline_env(), tmp_path / "run.log")
    assert code == ExitCode.OK, output
    fake = batch_of(server)
    assert len(fake.by_custom_id) == 5 and set(fake.by_custom_id.values()) == {1}
    a = json.loads((out / "a.pdf.json").read_text())
    copy = json.loads((out / "copy-of-a.pdf.json").read_text())
    assert a["pages"] == copy["pages"] and copy["source"]["path"] == "copy-of-a.pdf"
    assert run_report(out)["batch"]["pages_deduplicated"] == 3


def comparable(path: Path) -> dict:
    data = json.loads(path.read_text())
    source = data["source"]
    # Timings, run and job ids; and pages_from_checkpoint: in batch mode every answer reaches the
    # document through its checkpoint (the job's results are checkpointed, then assembled).
    for key in ("seconds", "processed_at", "run_id", "batch", "pages_from_checkpoint"):
        source.pop(key, None)
    return data


async def test_batch_outputs_are_those_of_a_sync_run(tmp_path: Path, fake_server) -> None:
    server = await fake_server(images_per_page=1)
    inp = tmp_path / "in"
    make_docs(inp, DOCS)
    sync_out, batch_out = tmp_path / "sync", tmp_path / "batch"
    config = write_batch_config(tmp_path / "c.yaml")
    code, output, _ = await run_to_end(run_args(inp, sync_out, server.url, *FAST), pipeline_env(),
                                       tmp_path / "sync.log")
    assert code == ExitCode.OK, output
    code, output, _ = await run_to_end(batch_args(inp, batch_out, server.url, "--config",
                                                  str(config)), pipeline_env(),
                                       tmp_path / "batch.log")
    assert code == ExitCode.OK, output
    assert_accounted(batch_out, DOCS)
    sync_files = [p.relative_to(sync_out) for p in output_files(sync_out)]
    assert sync_files == [p.relative_to(batch_out) for p in output_files(batch_out)]
    assert any(p.suffix == ".jpeg" for p in sync_files)
    for rel in sync_files:
        if rel.suffix == ".json":
            mine, theirs = comparable(sync_out / rel), comparable(batch_out / rel)
            differ = {k for k in mine["source"].keys() | theirs["source"].keys()
                      if mine["source"].get(k) != theirs["source"].get(k)}
            assert differ == set(), (rel, differ)
            assert mine == theirs, rel
        else:
            assert (sync_out / rel).read_bytes() == (batch_out / rel).read_bytes(), rel
    assert "batch" in json.loads((batch_out / "a.pdf.json").read_text())["source"]
