"""Splitting documents into request-sized chunks, and merging the chunk answers back."""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter
from reportlab.lib.pagesizes import letter
from reportlab.lib.utils import ImageReader
from reportlab.pdfgen import canvas

import pipeline.stages.split as split_module
from pipeline.backends.base import check_response
from pipeline.errors import Category, EncryptedError, InputError, RetryableError, TooLargeError
from pipeline.models import Chunk
from pipeline.stages.merge import merge_responses
from pipeline.stages.split import iter_chunks
from tests.pdfgen import page_text, pdf_bytes, write_pdf

PDF = "application/pdf"


def noise_image(side: int, seed: int) -> Image.Image:
    """Random pixels: they do not compress, so the image keeps its raw size in a PDF."""
    return Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))


def heavy_pdf(doc: str, pages: int, side: int = 185) -> bytes:
    """A PDF whose pages each carry their marker text and ~100 KB of incompressible image."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter)
    for i in range(pages):
        c.setFont("Helvetica", 14)
        c.drawString(72, letter[1] - 100, page_text(doc, i))
        c.drawImage(ImageReader(noise_image(side, seed=i)), 72, 200, width=side, height=side)
        c.showPage()
    c.save()
    return buf.getvalue()


def chunks_of(path: Path, media_type: str = PDF, **kwargs: Any) -> list[Chunk]:
    kwargs.setdefault("max_pages", 1000)
    kwargs.setdefault("max_bytes", 50_000_000)
    return list(iter_chunks(path, path.name, media_type, **kwargs))


def assert_chunk_pages(chunk: Chunk, doc: str) -> None:
    """The chunk is a standalone PDF whose page i is the source's page first_page + i."""
    reader = PdfReader(io.BytesIO(chunk.data))
    assert not reader.is_encrypted
    assert len(reader.pages) == chunk.page_count
    for i, page in enumerate(reader.pages):
        assert page_text(doc, chunk.first_page + i) in page.extract_text()
    assert chunk.sha256 == hashlib.sha256(chunk.data).hexdigest()


def encrypted_pdf(user_password: str, owner_password: str, pages: int = 3) -> bytes:
    reader = PdfReader(io.BytesIO(pdf_bytes([page_text("enc", i) for i in range(pages)])))
    writer = PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# ---- split: pages -------------------------------------------------------------------------------


def test_pages_are_cut_into_chunks_of_at_most_max_pages(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    write_pdf(path, "long", 11)
    chunks = chunks_of(path, max_pages=4)
    assert [(c.index, c.first_page, c.page_count) for c in chunks] == [(0, 0, 4), (1, 4, 4), (2, 8, 3)]
    for chunk in chunks:
        assert chunk.media_type == PDF
        assert chunk.doc_rel == "long.pdf"
        assert_chunk_pages(chunk, "long")


def test_a_small_pdf_is_sent_untouched(tmp_path: Path) -> None:
    path = tmp_path / "small.pdf"
    write_pdf(path, "small", 3)
    chunks = chunks_of(path, max_pages=10)
    assert len(chunks) == 1
    assert chunks[0].data == path.read_bytes()
    assert chunks[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (chunks[0].first_page, chunks[0].page_count) == (0, 3)


def test_a_whole_document_takes_the_callers_hash_and_cut_chunks_their_own(tmp_path: Path) -> None:
    """The job has hashed the file when it read it; a document sent whole is not hashed again.
    A chunk cut from it is other bytes and gets its own hash; without the bytes, the caller's
    hash is not trusted."""
    small, long = tmp_path / "small.pdf", tmp_path / "long.pdf"
    write_pdf(small, "small", 3)
    write_pdf(long, "long", 5)
    known = "ab" * 32  # not the real hash: shows which one the chunk carries
    whole = chunks_of(small, max_pages=10, data=small.read_bytes(), data_sha256=known)
    assert [c.sha256 for c in whole] == [known]
    cut = chunks_of(long, max_pages=2, data=long.read_bytes(), data_sha256=known)
    assert [c.sha256 for c in cut] == [hashlib.sha256(c.data).hexdigest() for c in cut]
    assert len(cut) == 3
    unread = chunks_of(small, max_pages=10, data_sha256=known)
    assert [c.sha256 for c in unread] == [hashlib.sha256(small.read_bytes()).hexdigest()]


def test_an_image_is_one_chunk_of_its_own_bytes(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    noise_image(60, seed=3).save(path, format="PNG")
    [chunk] = chunks_of(path, "image/png", max_pages=1, max_bytes=1_000_000)
    assert chunk.data == path.read_bytes()
    assert (chunk.first_page, chunk.page_count, chunk.media_type) == (0, 1, "image/png")
    assert chunk.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ---- split: bytes ---------------------------------------------------------------------------------


def test_the_byte_limit_shrinks_chunks(tmp_path: Path) -> None:
    path = tmp_path / "heavy.pdf"
    path.write_bytes(heavy_pdf("heavy", 8))
    assert path.stat().st_size > 700_000  # ~100 KB per page
    limit = 350_000
    chunks = chunks_of(path, max_pages=8, max_bytes=limit)
    assert len(chunks) > 2
    assert all(len(c.data) <= limit for c in chunks)
    assert all(c.page_count <= 8 for c in chunks)
    # Consecutive pages, all of them, none twice.
    assert chunks[0].first_page == 0
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.first_page == before.first_page + before.page_count
    assert sum(c.page_count for c in chunks) == 8
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert_chunk_pages(chunk, "heavy")


def test_a_single_page_above_the_byte_limit_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge-page.pdf"
    path.write_bytes(heavy_pdf("huge", 3))
    with pytest.raises(TooLargeError) as info:
        chunks_of(path, max_pages=3, max_bytes=50_000)
    assert info.value.category == Category.TOO_LARGE
    assert "page 1" in str(info.value)


def test_an_image_above_the_byte_limit_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    noise_image(200, seed=1).save(path, format="PNG")
    assert path.stat().st_size > 100_000
    with pytest.raises(TooLargeError) as info:
        chunks_of(path, "image/png", max_pages=1, max_bytes=50_000)
    assert info.value.category == Category.TOO_LARGE


# ---- split: bad and protected inputs -------------------------------------------------------------


def test_a_pdf_with_a_user_password_is_encrypted_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypted_pdf("s3cret-user", "owner-pw"))
    for passwords in (None, ["wrong"]):
        with pytest.raises(EncryptedError) as info:
            chunks_of(path, passwords=passwords)
        assert info.value.category == Category.ENCRYPTED


def test_a_configured_password_opens_an_encrypted_pdf(tmp_path: Path) -> None:
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypted_pdf("s3cret-user", "owner-pw"))
    chunks = chunks_of(path, passwords=["wrong", "s3cret-user"], max_pages=2)
    assert [(c.first_page, c.page_count) for c in chunks] == [(0, 2), (2, 1)]
    for chunk in chunks:
        assert_chunk_pages(chunk, "enc")  # decrypted: the service can read it


def test_an_empty_user_password_opens_without_configuration(tmp_path: Path) -> None:
    path = tmp_path / "owner-only.pdf"
    path.write_bytes(encrypted_pdf("", "owner-pw"))
    chunks = chunks_of(path, max_pages=10)
    assert sum(c.page_count for c in chunks) == 3
    for chunk in chunks:
        assert chunk.data != path.read_bytes()  # never the encrypted original
        assert_chunk_pages(chunk, "enc")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header-only"])
def test_a_damaged_pdf_is_an_input_error(tmp_path: Path, damage: str) -> None:
    good = pdf_bytes([page_text("d", i) for i in range(5)])
    first_stream = good.index(b"stream")  # reportlab writes every page's content after the pages
    data = {
        # Cut before the content streams: the pages' text is gone, no repair can bring it back,
        # and sending five blank pages would record an empty document as done.
        "truncated": good[:first_stream],
        "garbage": b"%PDF-1.7\n" + random.Random(7).randbytes(4000),
        "header-only": b"%PDF-1.4\n",
    }[damage]
    path = tmp_path / "broken.pdf"
    path.write_bytes(data)
    with pytest.raises(InputError) as info:
        chunks_of(path, max_pages=2)
    assert info.value.category == Category.INPUT
    assert "broken.pdf" in str(info.value)


def test_a_pdf_missing_only_its_cross_reference_table_is_repaired(tmp_path: Path) -> None:
    good = pdf_bytes([page_text("r", i) for i in range(5)])
    path = tmp_path / "no-xref.pdf"
    path.write_bytes(good[: good.rindex(b"xref")])  # every object intact, xref and trailer gone
    opened: list[Any] = []
    chunks = chunks_of(path, max_pages=2, on_open=opened.append)
    assert opened[0].repaired is True
    assert [(c.first_page, c.page_count) for c in chunks] == [(0, 2), (2, 2), (4, 1)]
    for chunk in chunks:
        assert_chunk_pages(chunk, "r")


def test_a_pdf_without_pages_is_an_input_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PdfWriter().write(buf)
    path = tmp_path / "nothing.pdf"
    path.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="no pages"):
        chunks_of(path)


# ---- split: determinism and streaming ------------------------------------------------------------


def test_the_layout_is_the_same_on_every_call(tmp_path: Path) -> None:
    light = tmp_path / "light.pdf"
    write_pdf(light, "light", 9)
    heavy = tmp_path / "heavy.pdf"
    heavy.write_bytes(heavy_pdf("heavy", 5))

    def layout(path: Path, **kwargs: Any) -> list[tuple[int, int, str]]:
        return [(c.first_page, c.page_count, c.sha256) for c in chunks_of(path, **kwargs)]

    assert layout(light, max_pages=4) == layout(light, max_pages=4)
    assert len(layout(light, max_pages=4)) == 3
    assert layout(heavy, max_pages=5, max_bytes=250_000) == layout(heavy, max_pages=5, max_bytes=250_000)


def test_chunks_are_built_only_when_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "long.pdf"
    write_pdf(path, "long", 300)
    real_write = split_module._write
    built: list[tuple[int, int]] = []

    def counting_write(pdf: Any, start: int, stop: int) -> bytes:
        built.append((start, stop))
        return real_write(pdf, start, stop)

    monkeypatch.setattr(split_module, "_write", counting_write)
    chunks = iter_chunks(path, "long.pdf", PDF, max_pages=10, max_bytes=50_000_000)
    assert built == []
    first = next(chunks)
    assert (first.first_page, first.page_count) == (0, 10)
    assert built == [(0, 10)]  # the other 29 chunks do not exist yet
    second = next(chunks)
    assert second.first_page == 10
    assert built == [(0, 10), (10, 20)]
    assert sum(1 for _ in chunks) == 28
    assert len(built) == 30


# ---- merge: checking answers ------------------------------------------------------------------


def chunk(first_page: int, page_count: int, rel: str = "doc.pdf", index: int = 0) -> Chunk:
    return Chunk(rel, index, first_page, page_count, PDF, b"%PDF-", "0" * 64)


def page(index: int, markdown: str = "text", images: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"index": index, "markdown": markdown, "images": images or [], "dimensions": None}


def test_a_complete_answer_passes_the_check() -> None:
    response = {"pages": [page(0), page(1)], "model": "m"}
    assert check_response(chunk(0, 2), response) is response


@pytest.mark.parametrize(
    "response",
    [
        {"model": "m"},  # no pages at all
        {"pages": None},
        {"pages": "p"},
        {"pages": [page(0)]},  # one page missing
        {"pages": [page(0), page(1), page(2)]},  # one page too many
        {"pages": [page(0), {"index": 1}]},  # a page without markdown
        {"pages": [page(0), {"index": 1, "markdown": None}]},
        {"pages": [page(0), "not a page"]},
        [page(0), page(1)],  # not an object
    ],
)
def test_a_wrong_answer_is_retryable(response: Any) -> None:
    with pytest.raises(RetryableError):
        check_response(chunk(0, 2), response)


# ---- merge: renumbering and images --------------------------------------------------------------


def image(image_id: str) -> dict[str, Any]:
    return {"id": image_id, "top_left_x": 0, "top_left_y": 0, "bottom_right_x": 10,
            "bottom_right_y": 10, "image_base64": None}


def chunk_answer(pages: list[dict[str, Any]], doc_size: int, **extra: Any) -> dict[str, Any]:
    return {"pages": pages, "model": "mistral-ocr-2505", "document_annotation": None,
            "usage_info": {"pages_processed": len(pages), "doc_size_bytes": doc_size}, **extra}


def test_merge_renumbers_pages_and_keeps_image_ids_unique() -> None:
    # The service numbers pages and images per request, so both chunks say page 0, img-0.jpeg.
    first = chunk_answer(
        [
            page(0, "A0 ![img-0.jpeg](img-0.jpeg)", [image("img-0.jpeg")]),
            page(1, "A1 see [tbl-1.html](tbl-1.html) ![img-1.png](img-1.png)", [image("img-1.png")]),
        ],
        1000,
        x_future_field={"kept": True},
    )
    second = chunk_answer(
        [
            page(1, "B1 ![img-1.jpeg](img-1.jpeg)", [image("img-1.jpeg")]),  # answered out of order
            page(0, "B0 ![img-0.jpeg](img-0.jpeg)", [image("img-0.jpeg")]),
        ],
        2000,
    )
    merged = merge_responses([(chunk(0, 2), first), (chunk(2, 2, index=1), second)])

    assert [p["index"] for p in merged["pages"]] == [0, 1, 2, 3]
    assert [p["markdown"].split()[0] for p in merged["pages"]] == ["A0", "A1", "B0", "B1"]
    images = [im for p in merged["pages"] for im in p["images"]]
    ids = [im["id"] for im in images]
    assert len(set(ids)) == 4
    assert all(re.fullmatch(r"img-\d+\.[a-z0-9]+", i) for i in ids)
    assert [im["source_id"] for im in images] == ["img-0.jpeg", "img-1.png", "img-0.jpeg", "img-1.jpeg"]
    assert [i.rsplit(".", 1)[1] for i in ids] == ["jpeg", "png", "jpeg", "jpeg"]
    for p in merged["pages"]:
        for im in p["images"]:
            assert f"]({im['id']})" in p["markdown"]
    assert "[tbl-1.html](tbl-1.html)" in merged["pages"][1]["markdown"]
    # B0's link pointed at chunk 2's img-0.jpeg, which must not be confused with chunk 1's.
    b0 = merged["pages"][2]
    assert f"]({b0['images'][0]['id']})" in b0["markdown"]
    assert b0["images"][0]["source_id"] == "img-0.jpeg"
    assert merged["pages"][0]["images"][0]["id"] != b0["images"][0]["id"]

    assert merged["usage_info"] == {"pages_processed": 4, "doc_size_bytes": 3000}
    assert merged["model"] == "mistral-ocr-2505"
    assert merged["x_future_field"] == {"kept": True}
    assert "document_annotation" in merged


@pytest.mark.parametrize(
    ("hostile", "ext"),
    [("../../x.jpeg", "jpeg"), ("/tmp/x.jpeg", "jpeg"), ("..\\..\\x.png", "png"),
     ("no-extension", None), ("", None), ("a/b/../../../etc/passwd", None)],
)
def test_hostile_image_ids_become_safe_ids(hostile: str, ext: str | None) -> None:
    response = chunk_answer([page(0, f"before ![{hostile}]({hostile}) after", [image(hostile)])], 10)
    merged = merge_responses([(chunk(0, 1), response)])
    [img] = merged["pages"][0]["images"]
    new_id = img["id"]
    assert re.fullmatch(r"img-\d+\.[A-Za-z0-9]+", new_id)
    assert "/" not in new_id and "\\" not in new_id and ".." not in new_id
    if ext is not None:
        assert new_id.endswith("." + ext)
    assert img["source_id"] == hostile
    if hostile:
        assert f"({hostile})" not in merged["pages"][0]["markdown"]
        assert f"]({new_id})" in merged["pages"][0]["markdown"]


def test_merge_renumbers_tables_across_chunks_and_blocks_follow_the_new_ids() -> None:
    def answer(table_id: str, fmt: str) -> dict[str, Any]:
        p = page(0, f"T [{table_id}]({table_id}) ![img-0.jpeg](img-0.jpeg)", [image("img-0.jpeg")])
        p["tables"] = [{"id": table_id, "content": "<table></table>", "format": fmt}]
        p["blocks"] = [{"type": "table", "table_id": table_id, "content": "", "top_left_x": 0,
                        "top_left_y": 0, "bottom_right_x": 1, "bottom_right_y": 1},
                       {"type": "image", "image_id": "img-0.jpeg", "content": "", "top_left_x": 0,
                        "top_left_y": 0, "bottom_right_x": 1, "bottom_right_y": 1}]
        return chunk_answer([p], 10)

    merged = merge_responses([(chunk(0, 1), answer("tbl-0.html", "html")),
                              (chunk(1, 1, index=1), answer("../../evil.html", "markdown"))])
    tables = [t for p in merged["pages"] for t in p["tables"]]
    assert [(t["id"], t["source_id"]) for t in tables] == [("tbl-0.html", "tbl-0.html"),
                                                          ("tbl-1.md", "../../evil.html")]
    second = merged["pages"][1]
    assert "[tbl-1.md](tbl-1.md)" in second["markdown"] and "evil" not in second["markdown"]
    assert [b.get("table_id") or b.get("image_id") for b in second["blocks"]] == ["tbl-1.md",
                                                                                 "img-1.jpeg"]


def test_merge_keeps_each_chunks_annotation_with_its_pages_and_notes_what_is_not_json() -> None:
    first = chunk_answer([page(0), page(1)], 10, document_annotation='{"title": "A"}')
    second = chunk_answer([page(0)], 10, document_annotation="{cut off")
    merged = merge_responses([(chunk(0, 2), first), (chunk(2, 1, index=1), second)],
                             {"type": "object", "required": ["title"]})
    assert merged["document_annotation"] is None  # one string cannot stand for two chunks
    first_entry, second_entry = merged["document_annotations"]
    assert first_entry == {"pages": [1, 2], "annotation": {"title": "A"}}
    assert second_entry["pages"] == [3, 3] and second_entry["raw"] == "{cut off"
    assert second_entry["problems"][0].startswith("not valid JSON")
