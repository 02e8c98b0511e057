"""Content dedup in sync mode (issue 12 point 6): documents with the same bytes in one output are
OCR'd once, whether their twins are in flight at the same moment or already done in this run;
the others are made from that answer, the source block and the run report say so, and the cost
counts only what was paid. Real fake server on 127.0.0.1, real PDFs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import load_json, run_pipeline
from tests.pdfgen import write_pdf


def make_tree(folder: Path, copies: int) -> None:
    """`orig.pdf` (3 pages) and `copies` byte-identical twins in sub-folders, plus two others."""
    write_pdf(folder / "orig.pdf", "orig", 3)
    for n in range(copies):
        twin = folder / f"sub{n}" / f"copy-{n}.pdf"
        twin.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "orig.pdf", twin)
    write_pdf(folder / "other-a.pdf", "other-a", 2)
    write_pdf(folder / "other-b.pdf", "other-b", 1)


@pytest.mark.parametrize(("workers", "pages_per_request"), [(8, 50), (8, 1), (1, 50)])
async def test_twins_are_answered_once(tmp_path: Path, fake_server, workers: int,
                                       pages_per_request: int) -> None:
    """workers 8: twins are open at once and follow the request in flight; workers 1: each twin
    comes after the original is done and is made from the manifest's answer. One page per
    request: every chunk of a twin is shared."""
    inp, out = tmp_path / "in", tmp_path / "out"
    make_tree(inp, copies=4)
    server = await fake_server(latency=0.2)
    report = await run_pipeline(inp, out, server.url, workers=workers, max_in_flight=16,
                                max_pages_per_request=pages_per_request)

    assert report.exit_code == 0 and report.documents_done == 7
    # Paid: orig's 3 pages once, the two others' 3 pages.
    assert server.stats.pages_answered == 3 + 3
    assert report.pages_done == 4 * 3 + 3 + 3
    assert report.pages_same_content == 4 * 3
    # Which twin sends a chunk's request is a race: any of the five may lead any chunk. What
    # holds: same markdown for all, 12 of their 15 pages taken from another twin, none from itself.
    twins = ["orig.pdf"] + [f"sub{n}/copy-{n}.pdf" for n in range(4)]
    original = (out / "orig.pdf.md").read_text(encoding="utf-8")
    taken = 0
    for rel in twins:
        assert (out / f"{rel}.md").read_text(encoding="utf-8") == original
        source = load_json(out / f"{rel}.json")["source"]
        assert source["path"] == rel
        taken += source.get("pages_from_same_content", 0)
        if "same_content_as" in source:
            assert source["same_content_as"] in set(twins) - {rel}
    assert taken == 4 * 3
    for rel in ("other-a.pdf", "other-b.pdf"):
        assert "pages_from_same_content" not in load_json(out / f"{rel}.json")["source"]
    assert any("same content: 12 pages" in line for line in report.summary_lines())


async def test_cost_counts_only_the_pages_paid(tmp_path: Path, fake_server) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    make_tree(inp, copies=2)
    server = await fake_server()
    report = await run_pipeline(inp, out, server.url, price_per_1000_pages=1.0)
    assert server.stats.pages_answered == 6
    assert report.cost == pytest.approx(6 / 1000)


async def test_a_twin_whose_leader_failed_sends_its_own_request(tmp_path: Path,
                                                                fake_server) -> None:
    """The first request is refused for good (HTTP 422, not retried): the document that sent it
    fails; its twin, which was following that request, sends its own and is done."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pdf(inp / "a.pdf", "same", 2)
    shutil.copyfile(inp / "a.pdf", inp / "b.pdf")
    server = await fake_server(latency=0.3, fault_rate=1.0, faults=("422",), fault_limit=1)
    report = await run_pipeline(inp, out, server.url, workers=4)
    assert report.documents_done + report.documents_failed == 2
    assert report.documents_done == 1 and report.documents_failed == 1
    done = next(p for p in ("a.pdf", "b.pdf") if (out / f"{p}.json").exists())
    assert "same_content_as" not in load_json(out / f"{done}.json")["source"]
    assert server.stats.requests == 2


async def test_answers_are_dropped_from_the_manifest_when_the_run_ends(tmp_path: Path,
                                                                       fake_server) -> None:
    import sqlite3

    inp, out = tmp_path / "in", tmp_path / "out"
    make_tree(inp, copies=1)
    server = await fake_server()
    await run_pipeline(inp, out, server.url)
    with sqlite3.connect(out / ".ocr-pipeline" / "manifest.sqlite3") as db:
        kept = db.execute("SELECT COUNT(*) FROM chunks WHERE response IS NOT NULL").fetchone()[0]
    assert kept == 0
