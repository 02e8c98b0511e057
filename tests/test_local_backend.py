"""The local engine, checked from outside: real generated scans with known text through LocalBackend.

One backend (one process pool) is shared by the module; pages are small (half-letter) so the
whole module stays well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from rapidfuzz import fuzz

from pipeline.backends.local import LocalBackend
from pipeline.config import LocalSettings
from pipeline.errors import EncryptedError, InputError, TooLargeError
from pipeline.fakeserver.conformance import response_problems
from pipeline.models import Chunk
from tests.conftest import load_json, run_pipeline
from tests.layoutgen import DEV_FONTS, make_page
from tests.local_fixtures import (
    PARAGRAPHS,
    add_noise,
    cer,
    image_pdf,
    multi_page_pdf,
    normalize,
    prose_page,
    render,
    table_page,
    tilt,
    to_bytes,
)

HALF_LETTER = (396.0, 612.0)  # 5.5 x 8.5 in: a quarter of the pixels of a letter page at 300 dpi
SMALL = {"pagesize": HALF_LETTER, "margin": 36.0}


def chunk(data: bytes, media_type: str = "application/pdf", pages: int = 1) -> Chunk:
    return Chunk("doc", 0, 0, pages, media_type, data, hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    b = LocalBackend(LocalSettings(language="eng", dpi=300))
    yield b
    asyncio.run(b.close())


@pytest.fixture(scope="module")
def page():
    return prose_page("Weekly Bulletin", PARAGRAPHS[:3], font_size=11, **SMALL)


def only_page(resp: dict) -> dict:
    assert resp["usage_info"]["pages_processed"] == len(resp["pages"]) == 1
    return resp["pages"][0]


# --- born-digital text layer --------------------------------------------------------------------


async def test_text_layer_pages_are_taken_exactly_as_written(backend: LocalBackend) -> None:
    data, texts = multi_page_pdf(
        [("Quarterly Report", PARAGRAPHS[:3]), ("Annual Review", PARAGRAPHS[3:5])], **SMALL
    )
    resp = await backend.ocr(chunk(data, pages=2))
    assert resp["model"] == "local-tesseract"
    assert resp["usage_info"] == {"pages_processed": 2, "doc_size_bytes": len(data)}
    pages = resp["pages"]
    assert [p["index"] for p in pages] == [0, 1]
    for p, text in zip(pages, texts, strict=True):
        assert p["method"] == "text_layer"
        assert p["confidence"] is None and p["rotation"] == 0 and p["images"] == []
        assert normalize(p["markdown"]) == normalize(text)
        assert p["dimensions"] == {"dpi": 300, "width": 1650, "height": 2550}
    # Title as a heading, each paragraph its own block.
    blocks = pages[0]["markdown"].split("\n\n")
    assert blocks[0] == "# Quarterly Report"
    assert blocks[1:] == PARAGRAPHS[:3]


# --- scanned pages ------------------------------------------------------------------------------


async def test_clean_300dpi_scan_reads_below_2_percent_cer(backend: LocalBackend, page) -> None:
    scan = image_pdf([render(page.pdf, 300)], 300)
    p = only_page(await backend.ocr(chunk(scan)))
    assert p["method"] == "ocr"
    assert cer(page.text, p["markdown"]) < 0.02
    assert p["confidence"] > 80
    dims = p["dimensions"]
    assert dims["dpi"] == 300
    assert abs(dims["width"] - 1650) <= 1 and abs(dims["height"] - 2550) <= 1
    assert p["markdown"].startswith("# Weekly Bulletin\n\n")
    assert p["markdown"].count("\n\n") == 3  # title + three paragraphs


async def test_noisy_scan_reads_below_5_percent_cer(backend: LocalBackend, page) -> None:
    img = add_noise(render(page.pdf, 300), sigma=40)
    p = only_page(await backend.ocr(chunk(to_bytes(img, "PNG", dpi=(300, 300)), "image/png")))
    assert cer(page.text, p["markdown"]) < 0.05


@pytest.mark.parametrize("degrees", [1.0, -2.0])
async def test_slightly_tilted_scan_reads_below_5_percent_cer(
    backend: LocalBackend, page, degrees: float
) -> None:
    img = tilt(render(page.pdf, 300), degrees)
    p = only_page(await backend.ocr(chunk(to_bytes(img, "PNG", dpi=(300, 300)), "image/png")))
    assert cer(page.text, p["markdown"]) < 0.05
    assert p["rotation"] == 0


@pytest.mark.parametrize(("turned", "expected_rotation"), [(90, 270), (180, 180), (270, 90)])
async def test_page_scanned_sideways_or_upside_down_comes_out_right(
    backend: LocalBackend, page, turned: int, expected_rotation: int
) -> None:
    upright = render(page.pdf, 300)
    img = upright.rotate(turned, expand=True)  # PIL turns counter-clockwise
    p = only_page(await backend.ocr(chunk(to_bytes(img, "PNG", dpi=(300, 300)), "image/png")))
    assert cer(page.text, p["markdown"]) < 0.02
    assert p["markdown"].startswith("# Weekly Bulletin\n\n")
    assert p["rotation"] == expected_rotation
    # Dimensions are those of the upright page.
    assert (p["dimensions"]["width"], p["dimensions"]["height"]) == upright.size


async def test_two_column_page_reads_column_by_column(backend: LocalBackend) -> None:
    two = prose_page("Town Council Notes", PARAGRAPHS[:4], font_size=10, columns=2)
    p = only_page(await backend.ocr(chunk(image_pdf([render(two.pdf, 200)], 200))))
    md = p["markdown"]
    assert cer(two.text, md) < 0.02
    blocks = [normalize(b) for b in md.split("\n\n")]
    assert len(blocks) == 5
    # Each block is one whole paragraph, in the order written (left column first).
    for block, para in zip(blocks[1:], PARAGRAPHS[:4], strict=True):
        assert fuzz.ratio(block, para) > 97


async def test_table_comes_out_as_a_markdown_table(backend: LocalBackend) -> None:
    table = table_page(pagesize=HALF_LETTER)
    p = only_page(await backend.ocr(chunk(image_pdf([render(table.pdf, 300)], 300))))
    md = p["markdown"]
    assert "| Item | Quantity | Price |" in md
    assert "| Coffee beans | 2 | 18.50 |" in md
    assert "| Paper cups | 50 | 6.00 |" in md
    assert md.startswith("# Order Summary")


async def test_multi_page_scanned_pdf_gives_pages_in_order(backend: LocalBackend) -> None:
    pages = [
        prose_page(t, [para], font_size=12, **SMALL)
        for t, para in [("Annual Review", PARAGRAPHS[0]), ("Town Council Notes", PARAGRAPHS[1])]
    ]
    scan = image_pdf([render(pg.pdf, 200) for pg in pages], 200)
    resp = await backend.ocr(chunk(scan, pages=2))
    assert [p["index"] for p in resp["pages"]] == [0, 1]
    for p, pg in zip(resp["pages"], pages, strict=True):
        assert cer(pg.text, p["markdown"]) < 0.02
        assert p["dimensions"]["dpi"] == 300  # rendered at the configured dpi


async def test_multi_page_tiff_gives_one_page_per_frame(backend: LocalBackend) -> None:
    texts = [
        f"Invoice number {n} for the month of {m}" for n, m in [(101, "May"), (102, "June"), (103, "July")]
    ]
    frames = [_text_image(t) for t in texts]
    buf = io.BytesIO()
    frames[0].save(
        buf, format="TIFF", save_all=True, append_images=frames[1:], dpi=(300, 300), compression="tiff_lzw"
    )
    resp = await backend.ocr(chunk(buf.getvalue(), "image/tiff"))
    assert [p["index"] for p in resp["pages"]] == [0, 1, 2]
    assert resp["usage_info"]["pages_processed"] == 3
    for p, t in zip(resp["pages"], texts, strict=True):
        assert cer(t, p["markdown"]) < 0.02
        assert p["dimensions"]["dpi"] == 300


async def test_jpeg_photo_and_transparent_png_are_read(backend: LocalBackend) -> None:
    text = "Total amount due 42.50 thank you"
    jpg = _text_image(text, background=(236, 230, 214)).convert("RGB")
    p = only_page(await backend.ocr(chunk(to_bytes(jpg, "JPEG", quality=60), "image/jpeg")))
    assert cer(text, p["markdown"]) < 0.05
    # Black text on a transparent background must not become black on black.
    rgba = Image.new("RGBA", (1400, 200), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).text((40, 60), text, fill=(0, 0, 0, 255), font_size=56)
    p = only_page(await backend.ocr(chunk(to_bytes(rgba, "PNG"), "image/png")))
    assert cer(text, p["markdown"]) < 0.05


async def test_blank_page_gives_empty_markdown(backend: LocalBackend) -> None:
    blank = Image.new("L", (1200, 1600), 255)
    p = only_page(await backend.ocr(chunk(to_bytes(blank, "PNG"), "image/png")))
    assert p["markdown"] == "" and p["confidence"] is None


async def test_event_loop_keeps_running_during_ocr(backend: LocalBackend, page) -> None:
    scan = image_pdf([render(page.pdf, 300)], 300)
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stop))
    await asyncio.gather(backend.ocr(chunk(scan)), backend.ocr(chunk(scan)))
    stop.set()
    await tick
    assert len(gaps) > 10
    assert max(gaps) < 0.25


# --- failures -----------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a few bytes."""

    def chunk_(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk_(b"IHDR", ihdr)
        + chunk_(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk_(b"IEND", b"")
    )


async def test_decompression_bomb_is_refused_as_too_large(backend: LocalBackend) -> None:
    bomb = _png_header_only(50_000, 50_000)  # 2.5 gigapixels declared in 100 bytes
    with pytest.raises(TooLargeError) as err:
        await backend.ocr(chunk(bomb, "image/png"))
    assert "50000x50000" in str(err.value) and "local.max_pixels" in str(err.value)
    assert err.value.category == "too_large"


async def test_oversized_pdf_page_is_refused_before_rendering(backend: LocalBackend) -> None:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(14400, 14400))  # 200 x 200 in: 3.6 gigapixels at 300 dpi
    c.drawImage  # noqa: B018  (no text: the page needs OCR)
    c.rect(100, 100, 500, 500, fill=1)
    c.showPage()
    c.save()
    with pytest.raises(TooLargeError) as err:
        await backend.ocr(chunk(buf.getvalue()))
    assert "60000x60000" in str(err.value)


async def test_corrupt_image_is_an_input_error(backend: LocalBackend, page) -> None:
    png = to_bytes(render(page.pdf, 100), "PNG")
    with pytest.raises(InputError) as err:
        await backend.ocr(chunk(png[: len(png) // 2], "image/png"))
    assert "PNG" in str(err.value) and "re-export" in str(err.value)
    with pytest.raises(InputError):
        await backend.ocr(chunk(b"\xff\xd8\xff\xe0 this is not really a jpeg", "image/jpeg"))


async def test_corrupt_and_encrypted_pdfs_fail_with_their_category(backend: LocalBackend) -> None:
    with pytest.raises(InputError):
        await backend.ocr(chunk(b"%PDF-1.7\n1 0 obj garbage"))
    from pypdf import PdfReader, PdfWriter

    data, _ = multi_page_pdf([("Secret", PARAGRAPHS[:1])], **SMALL)
    writer = PdfWriter()
    for pg in PdfReader(io.BytesIO(data)).pages:
        writer.add_page(pg)
    writer.encrypt(user_password="s3cret", owner_password="owner")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(EncryptedError):
        await backend.ocr(chunk(out.getvalue()))


async def test_backend_survives_failures_and_keeps_working(backend: LocalBackend, page) -> None:
    with pytest.raises(InputError):
        await backend.ocr(chunk(b"not an image at all", "image/png"))
    resp = await backend.ocr(chunk(page.pdf))
    assert resp["pages"][0]["method"] == "text_layer"


def _text_image(text: str, background: tuple[int, int, int] | int = 255) -> Image.Image:
    mode = "RGB" if isinstance(background, tuple) else "L"
    img = Image.new(mode, (1500, 260), background)
    ImageDraw.Draw(img).text((50, 90), text, fill=0 if mode == "L" else (20, 20, 20), font_size=60)
    return img


# --- output options: header/footer only when asked, typed blocks (issue 13 point 6) --------------


def _magazine_input(tmp_path: Path) -> tuple[Path, list[str]]:
    """A generated magazine page (header, headline, columns, a picture, caption, footer) as a PNG."""
    page = make_page("magazine", 2, DEV_FONTS[0])
    inp = tmp_path / "in"
    inp.mkdir()
    page.image.save(inp / "mag.png", dpi=(page.dpi, page.dpi))
    return inp, page.text.split("\n\n")


async def test_header_and_footer_leave_the_markdown_only_when_the_run_asks(tmp_path: Path) -> None:
    inp, parts = _magazine_input(tmp_path)
    header, footer = parts[0], parts[-1]
    plain = await run_pipeline(inp, tmp_path / "plain", "", backend="local", local={"processes": 1})
    asked = await run_pipeline(inp, tmp_path / "asked", "", backend="local", local={"processes": 1},
                               extract_header=True, extract_footer=True, markdown_headers_footers=False)
    assert plain.exit_code == asked.exit_code == 0
    [kept] = load_json(tmp_path / "plain/mag.png.json")["pages"]
    assert kept["header"] is None and kept["footer"] is None
    md = (tmp_path / "plain/mag.png.md").read_text()
    assert normalize(header) in normalize(md) and md.rstrip().endswith(footer)
    [split] = load_json(tmp_path / "asked/mag.png.json")["pages"]
    assert fuzz.ratio(split["header"] or "", header) >= 90, split["header"]
    assert split["footer"] == footer
    md = (tmp_path / "asked/mag.png.md").read_text()
    assert normalize(header) not in normalize(md) and not md.rstrip().endswith(footer)
    assert normalize(split["markdown"]) in normalize(md)


async def test_blocks_come_typed_with_boxes_in_the_apis_shape(tmp_path: Path) -> None:
    inp, parts = _magazine_input(tmp_path)
    header, headline, footer = parts[0], parts[1], parts[-1]
    out = tmp_path / "out"
    report = await run_pipeline(inp, out, "", backend="local", local={"processes": 1},
                                include_blocks=True, extract_header=True, extract_footer=True)
    assert report.exit_code == 0
    stored = load_json(out / "mag.png.json")
    assert response_problems(stored) == []
    [page] = stored["pages"]
    blocks = page["blocks"]
    width, height = page["dimensions"]["width"], page["dimensions"]["height"]
    kinds = [b["type"] for b in blocks]
    assert kinds[0] == "header" and kinds[-1] == "footer", kinds
    assert {"title", "text", "caption", "image"} <= set(kinds), kinds
    for b in blocks:
        assert 0 <= b["top_left_x"] < b["bottom_right_x"] <= width
        assert 0 <= b["top_left_y"] < b["bottom_right_y"] <= height
    [title] = [b for b in blocks if b["type"] == "title"]
    assert title["content"] == f"# {headline}"
    assert blocks[-1]["content"] == footer and blocks[-1]["bottom_right_y"] > 0.9 * height
    assert blocks[0]["bottom_right_y"] < 0.1 * height and fuzz.ratio(blocks[0]["content"], header) >= 90
    # Every text block's content is in the page's markdown, in the same order.
    body = [b["content"] for b in blocks if b["type"] in ("text", "title", "caption")]
    at = [page["markdown"].find(c) for c in body]
    assert -1 not in at and at == sorted(at)
    # The picture: an image entry with its box, the block pointing at it, its pixels stored.
    [image] = [b for b in blocks if b["type"] == "image"]
    [entry] = page["images"]
    assert image["image_id"] == entry["id"]
    assert (out / entry["image_path"]).stat().st_size > 1000
    caption = next(b for b in blocks if b["type"] == "caption")
    assert 0 <= caption["top_left_y"] - image["bottom_right_y"] < 0.05 * height


async def test_without_include_blocks_pages_carry_no_blocks(backend: LocalBackend, page) -> None:
    resp = await backend.ocr(chunk(page.pdf))
    assert "blocks" not in only_page(resp)
    assert only_page(resp)["images"] == []
