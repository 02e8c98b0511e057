"""Outputs written atomically inside the output tree; the manifest's life cycle; the plan."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import pipeline.stages.plan as plan_module
import pipeline.stages.store as store_module
from pipeline.errors import Category, DocumentError
from pipeline.manifest import DocumentRow, Manifest, PlannedDocument
from pipeline.models import Chunk, SourceFile
from pipeline.stages.merge import merge_responses
from pipeline.stages.plan import TODO, Decision, decide, file_sha256
from pipeline.stages.store import atomic_write, output_base, safe_component, write_document
from tests.forked import run_forked
from tests.pdfgen import jpeg_bytes, pdf_bytes


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def data_url(mime: str, blob: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode('ascii')}"


def png_blob() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    return buf.getvalue()


def sample_response() -> tuple[dict[str, Any], bytes, bytes]:
    """A merged two-page response with a JPEG on page 1 and a PNG on page 2."""
    jpeg, png = jpeg_bytes((8, 8)), png_blob()
    response = {
        "pages": [
            {"index": 0, "markdown": "First page text\n\n![img-0.jpeg](img-0.jpeg)",
             "images": [{"id": "img-0.jpeg", "image_base64": data_url("image/jpeg", jpeg)}],
             "dimensions": None},
            {"index": 1, "markdown": "Second page text ![img-1.png](img-1.png) [tbl-0.html](tbl-0.html)",
             "images": [{"id": "img-1.png", "image_base64": data_url("image/png", png)}],
             "dimensions": None},
        ],
        "model": "mistral-ocr-2505",
        "usage_info": {"pages_processed": 2, "doc_size_bytes": 99},
        "x_unknown": [1, 2, 3],
    }
    return response, jpeg, png


# ---- store ------------------------------------------------------------------------------------


def test_write_document_mirrors_the_tree_with_json_markdown_and_images(tmp_path: Path) -> None:
    out = tmp_path / "out"
    response, jpeg, png = sample_response()
    source = {"path": "a/b/scan.pdf", "sha256": "ab" * 32, "pages": 2}
    written = write_document(out, "a/b/scan.pdf", response, source)

    base = out / "a" / "b"
    assert written["json"] == base / "scan.pdf.json"
    assert written["markdown"] == base / "scan.pdf.md"
    assert (base / "scan.pdf.images" / "img-0.jpeg").read_bytes() == jpeg
    assert (base / "scan.pdf.images" / "img-1.png").read_bytes() == png
    assert all_files(out) == [
        "a/b/scan.pdf.images/img-0.jpeg",
        "a/b/scan.pdf.images/img-1.png",
        "a/b/scan.pdf.json",
        "a/b/scan.pdf.md",
    ]

    document = json.loads((base / "scan.pdf.json").read_text())
    assert document["source"] == source
    assert document["x_unknown"] == [1, 2, 3]
    assert document["model"] == "mistral-ocr-2505"
    for page in document["pages"]:
        for image in page["images"]:
            assert not image.get("image_base64")
            assert (base / image["image_path"]).is_file()
    assert "base64," not in (base / "scan.pdf.json").read_text()

    markdown = (base / "scan.pdf.md").read_text()
    first, second = markdown.index("<!-- page 1 -->"), markdown.index("<!-- page 2 -->")
    assert first < markdown.index("First page text") < second < markdown.index("Second page text")
    assert "](scan.pdf.images/img-0.jpeg)" in markdown
    assert "](scan.pdf.images/img-1.png)" in markdown
    assert "](img-0.jpeg)" not in markdown
    assert "[tbl-0.html](tbl-0.html)" in markdown


def test_hostile_image_ids_stay_inside_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    tag = uuid.uuid4().hex
    blob = jpeg_bytes((8, 8))
    hostile = [f"../../escape-{tag}.jpeg", f"/tmp/abs-{tag}.jpeg", f"..\\..\\win-{tag}.jpeg", ".."]
    response = {
        "pages": [{"index": 0, "markdown": "x",
                   "images": [{"id": h, "image_base64": data_url("image/jpeg", blob)} for h in hostile]}],
        "model": "m",
    }
    write_document(out, "doc.pdf", response, {"path": "doc.pdf"})
    assert not Path(f"/tmp/abs-{tag}.jpeg").exists()
    outside = [p for p in tmp_path.rglob("*") if tag in p.name and not p.is_relative_to(out)]
    assert outside == []
    images = sorted(p for p in (out / "doc.pdf.images").iterdir())
    assert images and all(p.read_bytes() == blob for p in images)


def test_merged_hostile_ids_are_written_under_their_safe_names(tmp_path: Path) -> None:
    blob = jpeg_bytes((8, 8))
    answer = {"pages": [{"index": 0, "markdown": "![../../e.jpeg](../../e.jpeg)",
                         "images": [{"id": "../../e.jpeg", "image_base64": data_url("image/jpeg", blob)}]}],
              "model": "m", "usage_info": {"pages_processed": 1}}
    chunk = Chunk("d.pdf", 0, 0, 1, "application/pdf", b"", "0" * 64)
    merged = merge_responses([(chunk, answer)])
    write_document(tmp_path / "out", "d.pdf", merged, {"path": "d.pdf"})
    new_id = merged["pages"][0]["images"][0]["id"]
    assert (tmp_path / "out" / "d.pdf.images" / new_id).read_bytes() == blob
    assert f"](d.pdf.images/{new_id})" in (tmp_path / "out" / "d.pdf.md").read_text()
    assert not (tmp_path / "e.jpeg").exists()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../x.jpeg", "x.jpeg"),
        ("/tmp/abs.jpeg", "abs.jpeg"),
        ("..\\..\\x.png", "x.png"),
        ("a b?.png", "a_b_.png"),
        ("img-3.jpeg", "img-3.jpeg"),
        ("..", None),
        (".", None),
        ("", None),
        ("....hidden", "hidden"),
        ("nul\x00byte.png", "nul_byte.png"),
        ("x" * 300, "x" * 100),
    ],
)
def test_safe_component(name: str, expected: str | None) -> None:
    result = safe_component(name, "fallback.bin")
    assert result == (expected if expected is not None else "fallback.bin")
    assert "/" not in result and "\\" not in result and not result.startswith(".")


@pytest.mark.parametrize("rel", ["../x.pdf", "a/../../x.pdf", "..", "", "a/.."])
def test_output_base_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(DocumentError):
        output_base(tmp_path / "out", rel)


def test_output_base_mirrors_the_relative_path(tmp_path: Path) -> None:
    assert output_base(tmp_path, "a/b/scan.pdf") == tmp_path / "a" / "b" / "scan.pdf"
    assert output_base(tmp_path, "./a//b.png") == tmp_path / "a" / "b.png"


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "doc.json"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert os.listdir(target.parent) == ["doc.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "doc.json"
    atomic_write(target, b"old complete content")

    def boom(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, failing, boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old complete content"
    assert os.listdir(tmp_path) == ["doc.json"]


def test_an_unwritable_output_folder_is_a_storage_failure() -> None:
    out = Path(tempfile.mkdtemp(prefix="ocr-store-"))
    try:
        os.chmod(out, 0o555)
        response, _, _ = sample_response()

        def attempt() -> tuple[str, str]:
            try:
                write_document(out, "a/scan.pdf", response, {"path": "a/scan.pdf"})
            except DocumentError as exc:
                return str(exc.category), str(exc)
            return "written", ""

        probe = out / f".probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            privileged = True  # root ignores the mode bits: try as an unprivileged user
        except PermissionError:
            privileged = False
        category, message = run_forked(attempt) if privileged else attempt()
        assert category == Category.STORAGE
        assert "a/scan.pdf" in message
        assert all_files(out) == []
    finally:
        os.chmod(out, 0o755)
        shutil.rmtree(out, ignore_errors=True)


def test_an_output_path_blocked_by_a_file_is_a_storage_failure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "b").write_text("a file where a folder must go")
    response, _, _ = sample_response()
    with pytest.raises(DocumentError) as info:
        write_document(out, "a/b/scan.pdf", response, {"path": "a/b/scan.pdf"})
    assert info.value.category == Category.STORAGE


# ---- manifest ---------------------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    m = Manifest(tmp_path / "out" / ".ocr-pipeline" / "manifest.sqlite3")
    yield m
    m.close()


def plan_docs(*paths: str) -> list[PlannedDocument]:
    return [PlannedDocument(p, 100 + i, 1_000 + i, "application/pdf") for i, p in enumerate(paths)]


def answer(pages: int, tag: str) -> dict[str, Any]:
    return {"pages": [{"index": i, "markdown": f"{tag} {i}"} for i in range(pages)], "model": "m"}


def test_manifest_life_of_a_document(manifest: Manifest) -> None:
    manifest.record_plan(plan_docs("a.pdf", "b.pdf"), "run-1")
    assert manifest.counts() == {"pending": 2}
    row = manifest.all_documents()["a.pdf"]
    assert (row.state, row.size, row.mtime_ns, row.attempts) == ("pending", 100, 1000, 0)

    manifest.claim("a.pdf", "sha-a", "run-1")
    row = manifest.all_documents()["a.pdf"]
    assert (row.state, row.sha256, row.attempts) == ("running", "sha-a", 1)

    manifest.checkpoint_chunk("a.pdf", "sha-a", 0, 4, "chunk-0", answer(4, "A"))
    manifest.checkpoint_chunk("a.pdf", "sha-a", 4, 2, "chunk-1", answer(2, "B"))
    assert manifest.chunk_response("a.pdf", "sha-a", 0, 4) == answer(4, "A")
    assert manifest.chunk_response("a.pdf", "sha-a", 4, 2) == answer(2, "B")
    assert manifest.chunk_response("a.pdf", "sha-OTHER", 0, 4) is None  # content changed
    assert manifest.chunk_response("a.pdf", "sha-a", 0, 3) is None  # a different layout

    manifest.finish("a.pdf", pages=6, cost=0.006)
    row = manifest.all_documents()["a.pdf"]
    assert (row.state, row.pages, row.error_category) == ("done", 6, None)
    assert manifest.chunk_response("a.pdf", "sha-a", 0, 4) is None  # merged: not a checkpoint
    # Kept until the run ends for a document of the same content (content dedup) ...
    assert manifest.content_response("sha-a", 4, 2, not_path="copy.pdf") == ("a.pdf", answer(2, "B"))
    assert manifest.content_response("sha-a", 4, 2, not_path="a.pdf") is None
    manifest.finish_run("run-1", 0, {})
    with sqlite3.connect(manifest.path) as db:  # ... then dropped
        rows = db.execute("SELECT state, response FROM chunks WHERE path='a.pdf'").fetchall()
    assert sorted(rows) == [("merged", None), ("merged", None)]

    manifest.claim("b.pdf", "sha-b", "run-1")
    manifest.fail("b.pdf", "rejected", "b.pdf: the service rejected the document (HTTP 422)")
    assert manifest.counts() == {"done": 1, "failed": 1}
    [failure] = manifest.failures()
    assert (failure.path, failure.state, failure.error_category) == ("b.pdf", "failed", "rejected")
    assert "HTTP 422" in (failure.error_message or "")
    assert manifest.totals()["pages"] == 6


def test_a_failure_found_by_discovery_gets_its_own_row(manifest: Manifest) -> None:
    manifest.fail("empty.pdf", "input", "empty file (0 bytes)", size=0, mtime_ns=42)
    row = manifest.all_documents()["empty.pdf"]
    assert (row.state, row.error_category, row.mtime_ns) == ("failed", "input", 42)


def test_release_returns_only_running_documents_to_pending(manifest: Manifest) -> None:
    manifest.record_plan(plan_docs("run.pdf", "done.pdf"), "run-1")
    manifest.claim("run.pdf", "s1", "run-1")
    manifest.claim("done.pdf", "s2", "run-1")
    manifest.finish("done.pdf", 1, 0.0)
    manifest.release("run.pdf")
    manifest.release("done.pdf")
    docs = manifest.all_documents()
    assert docs["run.pdf"].state == "pending"
    assert docs["done.pdf"].state == "done"


def test_moves_the_state_machine_forbids_raise_and_change_nothing(manifest: Manifest) -> None:
    """`claim` and `finish` move one row, only from the states `TRANSITIONS` allows."""
    from pipeline.manifest.database import IllegalMove

    manifest.record_plan(plan_docs("a.pdf"), "run-1")
    with pytest.raises(IllegalMove, match="a.pdf: cannot move from pending to done"):
        manifest.finish("a.pdf", 1, 0.0)  # never claimed
    with pytest.raises(IllegalMove, match="ghost.pdf: cannot move from no row to running"):
        manifest.claim("ghost.pdf", "s", "run-1")  # never planned
    manifest.claim("a.pdf", "s", "run-1")
    manifest.finish("a.pdf", 1, 0.0)
    with pytest.raises(IllegalMove, match="from done to done"):
        manifest.finish("a.pdf", 2, 9.9)  # stored twice
    with pytest.raises(IllegalMove, match="from done to running"):
        manifest.claim("a.pdf", "s", "run-2")  # a done document is planned again first
    row = manifest.all_documents()["a.pdf"]
    assert (row.state, row.pages, row.attempts) == ("done", 1, 1)
    assert "ghost.pdf" not in manifest.all_documents()


def test_a_crashed_run_leaves_resumable_pending_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    first = Manifest(path)
    first.record_plan(plan_docs("a.pdf"), "run-1")
    first.claim("a.pdf", "sha-a", "run-1")
    first.checkpoint_chunk("a.pdf", "sha-a", 0, 2, "c0", answer(2, "kept"))
    first.close()  # the process dies here: no finish, no release
    second = Manifest(path)
    try:
        second.start_run("run-2")
        assert second.all_documents()["a.pdf"].state == "pending"
        assert second.chunk_response("a.pdf", "sha-a", 0, 2) == answer(2, "kept")
    finally:
        second.close()


def test_manifest_is_wal_and_readable_by_another_connection_while_open(manifest: Manifest) -> None:
    manifest.record_plan(plan_docs("a.pdf"), "run-1")
    manifest.claim("a.pdf", "sha-a", "run-1")
    manifest.checkpoint_chunk("a.pdf", "sha-a", 0, 1, "c0", answer(1, "paid"))
    other = sqlite3.connect(manifest.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        state = other.execute("SELECT state, sha256 FROM documents WHERE path='a.pdf'").fetchone()
        assert state == ("running", "sha-a")
        # The chunk's answer is durable the moment it is checkpointed, before the document ends.
        [body] = other.execute("SELECT response FROM chunks WHERE path='a.pdf'").fetchone()
        assert json.loads(body) == answer(1, "paid")
    finally:
        other.close()


# ---- plan -------------------------------------------------------------------------------------


def source_for(path: Path, rel: str) -> SourceFile:
    st = path.stat()
    return SourceFile(path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns,
                      media_type="application/pdf")


def row_for(src: SourceFile, state: str, *, sha: str | None = None, size: int | None = None,
            mtime_ns: int | None = None, category: str | None = None) -> DocumentRow:
    return DocumentRow(
        path=src.rel, sha256=sha, size=src.size if size is None else size,
        mtime_ns=src.mtime_ns if mtime_ns is None else mtime_ns, state=state, attempts=1,
        error_category=category, error_message="why" if category else None, pages=1,
    )


@pytest.fixture
def doc(tmp_path: Path) -> SourceFile:
    path = tmp_path / "doc.pdf"
    path.write_bytes(pdf_bytes(["a page"]))
    return source_for(path, "doc.pdf")


def test_plan_new_document(doc: SourceFile) -> None:
    item = decide(doc, None)
    assert item.decision == Decision.NEW
    assert item.decision in TODO


def test_plan_unchanged_by_size_and_mtime_without_reading_the_file(
    doc: SourceFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_hashing(path: Path, block: int = 0) -> str:
        raise AssertionError("the fast path must not read the file")

    monkeypatch.setattr(plan_module, "file_sha256", no_hashing)
    item = decide(doc, row_for(doc, "done", sha="whatever"))
    assert item.decision == Decision.UNCHANGED
    assert item.decision not in TODO


def test_plan_touched_but_same_content_is_unchanged(doc: SourceFile) -> None:
    sha = file_sha256(doc.path)
    item = decide(doc, row_for(doc, "done", sha=sha, mtime_ns=doc.mtime_ns - 10**9))
    assert item.decision == Decision.UNCHANGED
    assert item.sha256 == sha


def test_plan_changed_content_is_redone(doc: SourceFile) -> None:
    item = decide(doc, row_for(doc, "done", sha="0" * 64, mtime_ns=doc.mtime_ns - 10**9))
    assert item.decision == Decision.CHANGED
    assert item.sha256 == file_sha256(doc.path)
    item = decide(doc, row_for(doc, "done", sha=file_sha256(doc.path), size=doc.size + 1))
    assert item.decision == Decision.UNCHANGED  # same bytes after all: size in the row was stale


def test_plan_failed_documents_wait_for_retry_failed(doc: SourceFile) -> None:
    failed = row_for(doc, "failed", sha="s", category="rejected")
    assert decide(doc, failed).decision == Decision.FAILED_EARLIER
    assert decide(doc, failed, retry_failed=True).decision == Decision.RETRY
    assert decide(doc, failed, retry_failed=True, retry_categories={"rejected"}).decision == Decision.RETRY
    assert decide(
        doc, failed, retry_failed=True, retry_categories={"backend", "timeout"}
    ).decision == Decision.FAILED_EARLIER
    assert Decision.FAILED_EARLIER not in TODO and Decision.RETRY in TODO


def test_plan_a_failed_document_that_changed_is_redone(doc: SourceFile) -> None:
    failed = row_for(doc, "failed", sha="s", category="input", size=0)
    assert decide(doc, failed).decision == Decision.CHANGED


@pytest.mark.parametrize("state", ["pending", "running"])
def test_plan_unfinished_documents_resume(doc: SourceFile, state: str) -> None:
    assert decide(doc, row_for(doc, state, sha="s")).decision == Decision.RESUME


@pytest.mark.parametrize("state", ["done", "failed", "pending"])
def test_plan_force_redoes_everything(doc: SourceFile, state: str) -> None:
    item = decide(doc, row_for(doc, state, sha=file_sha256(doc.path), category="input"), force=True)
    assert item.decision in TODO
    assert item.decision != Decision.UNCHANGED


def test_a_batch_line_id_written_by_the_manifest_is_parsed_back_by_the_collector(
        manifest: Manifest) -> None:
    """`batch_enqueue` writes the custom_id; `customid.parse_custom_id` reads it from the
    downloaded results: the two must agree on the format."""
    from pipeline.manifest.states import EnqueueVerdict
    from pipeline.transport.batch.customid import ChunkKey, make_custom_id, parse_custom_id

    sha = "ab" * 32
    manifest.record_plan(plan_docs("a.pdf"), "run-1")
    manifest.claim("a.pdf", sha, "run-1")
    output_id = manifest.batch_output_id()
    manifest.batch_open_part("p1", "p1.jsonl", "run-1")
    verdict, custom_id = manifest.batch_enqueue("a.pdf", 4, 2, "c" * 64, "p1", output_id)
    assert verdict == EnqueueVerdict.QUEUED
    assert custom_id == make_custom_id(output_id, ChunkKey(sha, 4, 2))
    assert parse_custom_id(output_id, custom_id) == ChunkKey(sha, 4, 2)
    assert parse_custom_id("f" * 16, custom_id) is None  # another output's line
    again = manifest.batch_enqueue("a.pdf", 4, 2, "c" * 64, "p1", output_id)
    assert again[0] == EnqueueVerdict.ALREADY
