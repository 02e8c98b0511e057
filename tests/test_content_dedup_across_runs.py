"""Content dedup across runs (issue 12 point 6): a document whose bytes equal those of a document
finished in an EARLIER run of the same output is made from that document's stored outputs, and
nothing is sent; unless the settings that shape an answer changed, the stored outputs are
incomplete, or `--force` asks for everything to be done again. Real fake server on 127.0.0.1,
real PDFs, real files."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import load_json, run_pipeline
from tests.pdfgen import write_pdf


def first_run_tree(inp: Path) -> None:
    write_pdf(inp / "orig.pdf", "orig", 3)
    write_pdf(inp / "other.pdf", "other", 2)


def add_twin(inp: Path) -> None:
    twin = inp / "later" / "copy.pdf"
    twin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(inp / "orig.pdf", twin)


def without_images_links(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pages = []
    for page in doc["pages"]:
        page = dict(page)
        page["images"] = [{k: v for k, v in im.items() if k != "image_path"}
                          for im in page["images"]]
        pages.append(page)
    return pages


async def test_a_twin_of_a_document_done_earlier_is_made_from_its_outputs(
        tmp_path: Path, fake_server: Any) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server(images_per_page=1)
    first = await run_pipeline(inp, out, server.url, max_pages_per_request=2,
                               price_per_1000_pages=1.0)
    assert first.exit_code == 0 and server.stats.pages_answered == 5
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url, max_pages_per_request=2,
                                price_per_1000_pages=1.0)

    assert second.exit_code == 0 and second.documents_done == 1
    assert server.stats.pages_answered == 5  # nothing sent for the twin
    assert second.pages_same_content == 3 and second.cost == 0
    orig, copy = load_json(out / "orig.pdf.json"), load_json(out / "later/copy.pdf.json")
    assert without_images_links(copy) == without_images_links(orig)
    assert {k: v for k, v in copy.items() if k not in ("pages", "source")} == \
        {k: v for k, v in orig.items() if k not in ("pages", "source")}
    source = copy["source"]
    assert source["path"] == "later/copy.pdf" and source["same_content_as"] == "orig.pdf"
    assert source["pages_from_same_content"] == 3 and source["pages"] == 3
    assert source["chunks"] == orig["source"]["chunks"]  # the layout the answer was cut into
    assert source["options_sha256"] == orig["source"]["options_sha256"]
    # The images are the twin's own files, and every link of its markdown resolves to them.
    links = [im["image_path"] for page in copy["pages"] for im in page["images"]]
    assert len(links) == 3 and all(link.startswith("copy.pdf.images/") for link in links)
    for page_orig, page_copy in zip(orig["pages"], copy["pages"], strict=True):
        for im_orig, im_copy in zip(page_orig["images"], page_copy["images"], strict=True):
            assert (out / "later" / im_copy["image_path"]).read_bytes() == \
                (out / im_orig["image_path"]).read_bytes()
    md = (out / "later/copy.pdf.md").read_text(encoding="utf-8")
    assert md == (out / "orig.pdf.md").read_text(encoding="utf-8").replace(
        "orig.pdf.images/", "copy.pdf.images/")
    assert any("same content: 3 pages" in line for line in second.summary_lines())


async def test_a_twin_made_with_other_answer_settings_is_ocrd_again(
        tmp_path: Path, fake_server: Any) -> None:
    """Pages without images were asked for this time: the earlier answer is not this answer."""
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server(images_per_page=1)
    assert (await run_pipeline(inp, out, server.url)).exit_code == 0
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url, include_images=False)

    assert second.exit_code == 0 and second.pages_same_content == 0
    assert server.stats.pages_answered == 5 + 3
    copy = load_json(out / "later/copy.pdf.json")
    assert "same_content_as" not in copy["source"]
    assert copy["source"]["options_sha256"] != load_json(out / "orig.pdf.json")["source"][
        "options_sha256"]


async def test_a_twin_whose_outputs_are_incomplete_is_ocrd_again(
        tmp_path: Path, fake_server: Any) -> None:
    """An image file of the finished document was deleted by hand: its outputs cannot make the
    twin's, which is OCR'd as if it had none, without an error."""
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server(images_per_page=1)
    assert (await run_pipeline(inp, out, server.url)).exit_code == 0
    next((out / "orig.pdf.images").iterdir()).unlink()
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url)

    assert second.exit_code == 0 and second.documents_done == 1
    assert second.pages_same_content == 0 and server.stats.pages_answered == 5 + 3
    copy = load_json(out / "later/copy.pdf.json")
    assert all((out / "later" / im["image_path"]).is_file()
               for page in copy["pages"] for im in page["images"])


async def test_force_takes_no_earlier_outputs(tmp_path: Path, fake_server: Any) -> None:
    """`orig.pdf` was moved to `later/copy.pdf` after the first run: its old outputs would make
    the moved file's (as a run without --force shows), but --force asks for fresh answers."""
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server()
    assert (await run_pipeline(inp, out, server.url)).exit_code == 0
    add_twin(inp)
    (inp / "orig.pdf").unlink()
    shutil.copytree(out, tmp_path / "out-kept")

    forced = await run_pipeline(inp, out, server.url, force=True)
    assert forced.exit_code == 0 and forced.documents_done == 2
    assert forced.pages_same_content == 0
    assert server.stats.pages_answered == 5 + 5
    assert "same_content_as" not in load_json(out / "later/copy.pdf.json")["source"]

    plain = await run_pipeline(inp, tmp_path / "out-kept", server.url)
    assert plain.exit_code == 0 and plain.pages_same_content == 3
    assert server.stats.pages_answered == 5 + 5  # the moved file is not paid again


async def test_batch_mode_takes_a_done_twin_before_any_request_line(
        tmp_path: Path, fake_server: Any) -> None:
    """Batch mode: the twin added after a finished batch run makes no request line and no job;
    the batch report counts its pages as deduplicated."""
    from pipeline.fakeserver.batch import batch_of

    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server()
    fake = batch_of(server)
    assert (await run_pipeline(inp, out, server.url, mode="batch")).exit_code == 0
    jobs, lines = fake.jobs_created, len(fake.by_custom_id)
    assert jobs >= 1 and lines >= 2
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url, mode="batch")

    assert second.exit_code == 0 and second.documents_done == 1
    assert (fake.jobs_created, len(fake.by_custom_id)) == (jobs, lines)
    assert second.pages_same_content == 3
    copy = load_json(out / "later/copy.pdf.json")
    assert copy["source"]["same_content_as"] == "orig.pdf"
    assert copy["pages"] == load_json(out / "orig.pdf.json")["pages"]


def edit_json(path: Path, change: Any) -> None:
    doc = load_json(path)
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("damage", ["images not a list", "image link to the manifest",
                                    "image link through a symbolic link"])
async def test_stored_outputs_that_were_tampered_with_make_no_twin(
        tmp_path: Path, fake_server: Any, damage: str) -> None:
    """Damaged or edited outputs are no twin: the document is OCR'd, nothing fails, and no file
    outside the document's own images is read into the new outputs."""
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server(images_per_page=1)
    assert (await run_pipeline(inp, out, server.url)).exit_code == 0
    if damage == "images not a list":
        edit_json(out / "orig.pdf.json", lambda d: d["pages"][0].update(images=5))
    elif damage == "image link to the manifest":
        edit_json(out / "orig.pdf.json", lambda d: d["pages"][0]["images"][0].update(
            image_path="../.ocr-pipeline/manifest.sqlite3"))
    else:
        outside = tmp_path / "outside"
        shutil.move(out / "orig.pdf.images", outside)
        (out / "orig.pdf.images").symlink_to(outside, target_is_directory=True)
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url)

    assert second.exit_code == 0 and second.documents_done == 1
    assert second.pages_same_content == 0 and server.stats.pages_answered == 5 + 3


async def test_a_twin_over_max_pages_per_document_fails_as_ocr_would(
        tmp_path: Path, fake_server: Any) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server()
    assert (await run_pipeline(inp, out, server.url)).exit_code == 0
    add_twin(inp)

    second = await run_pipeline(inp, out, server.url, max_pages_per_document=2)

    assert second.documents_failed == 1 and second.pages_same_content == 0
    assert [f.category for f in second.failures] == ["too_large"]


async def test_the_manifest_counts_no_cost_for_pages_another_document_paid(
        tmp_path: Path, fake_server: Any) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    first_run_tree(inp)
    server = await fake_server()
    assert (await run_pipeline(inp, out, server.url, price_per_1000_pages=1.0)).exit_code == 0
    add_twin(inp)
    assert (await run_pipeline(inp, out, server.url, price_per_1000_pages=1.0)).exit_code == 0
    with sqlite3.connect(out / ".ocr-pipeline" / "manifest.sqlite3") as db:
        costs = dict(db.execute("SELECT path, cost FROM documents"))
    assert costs["later/copy.pdf"] == 0 and costs["orig.pdf"] == pytest.approx(0.003)


def test_a_document_claimed_again_is_no_longer_the_twin_that_was_found(tmp_path: Path) -> None:
    """A twin found at claim time and rewritten while its files were read is not taken: its
    row's finishing time moves when it is claimed again."""
    from pipeline.manifest import Manifest, PlannedDocument

    manifest = Manifest(tmp_path / "m.sqlite3")
    manifest.record_plan([PlannedDocument("b.pdf", 10, 1, None), PlannedDocument("a.pdf", 10, 1, None)], "r1")
    manifest.claim("b.pdf", "same", "r1")
    manifest.finish("b.pdf", 1, 0.0)
    [(path, finished_at)] = manifest.claim("a.pdf", "same", "r1", twins=3)
    assert path == "b.pdf" and manifest.still_done("b.pdf", finished_at)
    manifest.record_plan([PlannedDocument("b.pdf", 11, 2, None)], "r1")  # changed meanwhile
    manifest.claim("b.pdf", "same", "r1")
    assert not manifest.still_done("b.pdf", finished_at)
    manifest.finish("b.pdf", 1, 0.0)
    assert not manifest.still_done("b.pdf", finished_at)
