"""Batch answers carry the output options too (issue 13): a batch run with tables, header/footer,
confidence, blocks and annotations turned on stores what a sync run over the same tree stores.

Both runs are real `python -m pipeline run` processes against one fake server; the stored files
are compared byte for byte, the JSON apart from `source` timings, run and job ids."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ExitCode
from pipeline.fakeserver.batch import batch_of
from tests.conftest import pipeline_env, run_args
from tests.faultkit import output_files, run_to_end
from tests.test_batch_mode import run_report
from tests.test_batch_sdk import comparable
from tests.test_rich_outputs import PAGES, SCHEMA, dangling_links, pdf

FIGURE = {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}
ARGS = ("--rps", "0", "--max-pages-per-request", "2", "--workers", "4", "--progress", "json")


def rich_config(tmp_path: Path) -> Path:
    """Every output option on, and a batch poll quick enough for a test."""
    (tmp_path / "report.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "figure.json").write_text(json.dumps(FIGURE))
    config = {
        "include_images": True,
        "table_format": "html",
        "extract_header": True,
        "extract_footer": True,
        "markdown_headers_footers": False,
        "confidence_scores_granularity": "word",
        "confidence_threshold": 0.8,
        "include_blocks": True,
        "document_annotation_schema": str(tmp_path / "report.json"),
        "document_annotation_prompt": "The report's title and year.",
        "bbox_annotation_schema": str(tmp_path / "figure.json"),
        "batch": {"poll_interval_min": 0.05, "poll_interval_max": 0.2},
    }
    path = tmp_path / "rich.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def write_tree(inp: Path) -> None:
    """A split document (3 pages, 2 per request) with tables and smudged words, and a small one."""
    (inp / "sub").mkdir(parents=True)
    (inp / "report.pdf").write_bytes(pdf(PAGES))
    (inp / "sub/note.pdf").write_bytes(pdf([["Memo", "Item | Qty", "Pens | 4", "Page 1 of 1"]]))


def assert_rich(out: Path) -> None:
    """The run stored every option's output: each would be missing from a plain answer."""
    doc = json.loads((out / "report.pdf.json").read_text())
    pages = doc["pages"]
    assert [p["header"] for p in pages] == ["ACME Annual Report"] * 3
    assert [p["footer"] for p in pages] == ["Page 1 of 3", "Page 2 of 3", "Page 3 of 3"]
    assert all(p["confidence_scores"]["word_confidence_scores"] for p in pages)
    assert all(p["blocks"] for p in pages)
    assert sorted(t.name for t in (out / "report.pdf.tables").iterdir()) == [
        "tbl-0.html", "tbl-1.html"]
    annotation = json.loads((out / "report.pdf.annotation.json").read_text())
    assert [a["pages"] for a in annotation] == [[1, 2], [3, 3]]  # one per chunk of the split document
    assert any(im.get("image_annotation") for p in pages for im in p["images"])
    assert (out / "sub/note.pdf.tables/tbl-0.html").is_file()
    assert dangling_links(out)[1] == []


async def test_a_batch_run_with_rich_options_stores_what_a_sync_run_stores(
        tmp_path: Path, fake_server) -> None:
    server = await fake_server(images_per_page=1)
    inp, sync_out, batch_out = tmp_path / "in", tmp_path / "sync", tmp_path / "batch"
    write_tree(inp)
    config = str(rich_config(tmp_path))
    code, output, _ = await run_to_end(run_args(inp, sync_out, server.url, *ARGS, "--config", config),
                                       pipeline_env(), tmp_path / "sync.log")
    assert code == ExitCode.OK, output
    assert_rich(sync_out)
    assert server.stats.requests == 3
    code, output, _ = await run_to_end(
        run_args(inp, batch_out, server.url, *ARGS, "--config", config, "--mode", "batch"),
        pipeline_env(), tmp_path / "batch.log")
    assert code == ExitCode.OK, output
    assert server.stats.requests == 3, "the batch run sent a synchronous request"
    assert sum(batch_of(server).by_custom_id.values()) == 3
    assert_rich(batch_out)

    sync_files = [p.relative_to(sync_out) for p in output_files(sync_out)]
    assert sync_files == [p.relative_to(batch_out) for p in output_files(batch_out)]
    for rel in sync_files:
        if rel.name.endswith(".pdf.json"):
            assert comparable(sync_out / rel) == comparable(batch_out / rel), rel
        else:
            assert (sync_out / rel).read_bytes() == (batch_out / rel).read_bytes(), rel
    assert "batch" in json.loads((batch_out / "report.pdf.json").read_text())["source"]
    sync_report, batch_report = run_report(sync_out), run_report(batch_out)
    assert batch_report["low_confidence_pages"] == sync_report["low_confidence_pages"] != []
