"""Real-world files are read, not refused, and every TIFF frame keeps its own resolution.

- BigTIFF (64-bit offsets) is a TIFF: sniffed as one and read through the local engine. A
  big-endian BigTIFF (which Pillow cannot open) written by tifffile gives one page per frame, each
  with its own dpi, through the local engine and through the fake server.
- A PDF encrypted with an empty user password and no /ID, whose pages have no content stream,
  is blank in every reader: done with empty markdown, not refused as damaged. A repair that loses
  content the original had is still refused.
- TIFF frames have one owner (pipeline/stages/tiff.py); each frame's dpi reaches the page's
  `dimensions.dpi` and the local engine.
- Stored failure messages are the same on every run: no object reprs with memory addresses.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.backends.local import images
from pipeline.errors import InputError, TooLargeError
from pipeline.reasons import exception_text, stable_text
from pipeline.stages import tiff
from pipeline.stages.sniff import sniff
from pipeline.stages.split import iter_chunks, open_pdf
from tests import hostile
from tests.conftest import REPO, load_json, pipeline_env, run_args, run_pipeline_process
from tests.local_fixtures import prose_page, render, tiff_bytes
from tests.pdfgen import pdf_bytes, png_bytes

SAMPLE_TIFF = REPO / "samples/scanned-2pages.tif"  # two frames scanned at 200 dpi
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def page_image(title: str, dpi: int) -> Image.Image:
    """A typeset page rasterised at `dpi`, as a scanner at that resolution would give it."""
    return render(prose_page(title, ["A short paragraph of plain text for the reader."]).pdf, dpi)


def dpis_of_png_frames(data: bytes) -> list[int | None]:
    """What the local engine is given for each frame the split stage makes of a TIFF: the dpi
    `images.load_frame` returns is the one the worker hands to Tesseract."""
    found = []
    for png in tiff.frames_as_png(data, "t.tif"):
        img = images.open_image(png, "image/png", 10**9)
        _, dpi = images.load_frame(img, 0, "image/png", 10**9)
        found.append(dpi)
    return found


# ---- BigTIFF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_bigtiff_is_sniffed_as_a_tiff(byteorder: str) -> None:
    data = tiff_bytes([(Image.new("L", (8, 8), 255), (300, 300))], big=True, byteorder=byteorder)
    assert data[:4] in (b"II+\x00", b"MM\x00+")
    assert sniff(data[:1024]) == "image/tiff"


def test_bigtiff_frames_are_pages_with_their_own_dpi() -> None:
    white, grey = Image.new("L", (40, 30), 255), Image.new("L", (20, 50), 128)
    data = tiff_bytes([(white, (150, 150)), (grey, (300, 300))], big=True)
    frames = [(f.index, f.image.size, f.dpi) for f in tiff.frames(data, "big.tif")]
    assert frames == [(0, (40, 30), (150.0, 150.0)), (1, (20, 50), (300.0, 300.0))]
    assert dpis_of_png_frames(data) == [150, 300]


def big_endian_bigtiff(frames: list[tuple[Image.Image, tuple[int, int] | None]]) -> bytes:
    """A big-endian BigTIFF ("MM\\0+") written by tifffile, one frame per image, each with its
    own resolution in dots per inch (or none), deflate-compressed as scanners often write them."""
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf, bigtiff=True, byteorder=">") as writer:
        for image, dpi in frames:
            array = np.asarray(image)
            extra = {"resolution": dpi, "resolutionunit": "INCH"} if dpi else {}
            writer.write(array, photometric="rgb" if array.ndim == 3 else "minisblack",
                         compression="zlib", **extra)
    data = buf.getvalue()
    assert data[:4] == b"MM\x00+"
    return data


def test_pillow_cannot_open_a_big_endian_bigtiff_so_tifffile_reads_it() -> None:
    """The reason for the tifffile path: if Pillow learns to read these, the path can go."""
    data = big_endian_bigtiff([(Image.new("L", (8, 8), 255), (300, 300))])
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError
        Image.open(io.BytesIO(data)).load()


def test_big_endian_bigtiff_frames_keep_their_pixels_and_dpi() -> None:
    rng = np.random.default_rng(7)
    grey = Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), "L")
    colour = Image.fromarray(rng.integers(0, 256, (20, 25, 3), dtype=np.uint8), "RGB")
    bilevel = Image.fromarray(np.eye(16, dtype=np.uint8) * 255, "L")
    data = big_endian_bigtiff([(grey, (150, 150)), (colour, (300, 200)), (bilevel, None)])
    frames = list(tiff.frames(data, "big.tif"))
    assert [(f.index, f.image.mode, f.image.size, f.dpi) for f in frames] == [
        (0, "L", (40, 30), (150.0, 150.0)),
        (1, "RGB", (25, 20), (300.0, 200.0)),
        (2, "L", (16, 16), None),
    ]
    for frame, original in zip(frames, (grey, colour, bilevel), strict=True):
        assert frame.image.tobytes() == original.tobytes()
    assert dpis_of_png_frames(data) == [150, 300, None]


def test_a_big_endian_bigtiff_too_large_or_broken_is_refused_with_its_name() -> None:
    data = big_endian_bigtiff([(Image.new("L", (100, 100), 255), (300, 300))])
    with pytest.raises(TooLargeError, match="big.tif: frame 1 is 100x100"):
        list(tiff.frames(data, "big.tif", max_pixels=5_000))
    with pytest.raises(InputError, match="broken.tif: TIFF cannot be decoded"):
        list(tiff.frames(data[:40], "broken.tif"))


def test_a_big_endian_bigtiff_counts_its_frames_for_the_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    path.write_bytes(big_endian_bigtiff([(Image.new("L", (8, 8), 255), None)] * 3))
    assert tiff.count_frames(path) == 3
    path.write_bytes(tiff_bytes([(Image.new("L", (8, 8), 255), None)] * 2))
    assert tiff.count_frames(path) == 2


BIG_ENDIAN_PAGES = [("Harbour Notes", 150), ("Station Log", 300), ("Weather Diary", 200)]


def write_big_endian_scan(folder: Path) -> bytes:
    folder.mkdir()
    data = big_endian_bigtiff(
        [(page_image(title, dpi), (dpi, dpi)) for title, dpi in BIG_ENDIAN_PAGES]
    )
    (folder / "big-endian.tif").write_bytes(data)
    return data


def test_a_big_endian_bigtiff_goes_through_the_local_engine(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    write_big_endian_scan(inp)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(REPO / "config/default.yaml"),
         "--input", str(inp), "--output", str(out), "--progress", "off"],
        capture_output=True, text=True, cwd=REPO, env=pipeline_env(None), timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = load_json(out / "big-endian.tif.json")["pages"]
    assert [p["dimensions"]["dpi"] for p in pages] == [dpi for _, dpi in BIG_ENDIAN_PAGES]
    for page, (title, _) in zip(pages, BIG_ENDIAN_PAGES, strict=True):
        assert title in page["markdown"], page["markdown"]


async def test_a_big_endian_bigtiff_goes_through_the_fake_server(tmp_path: Path, fake_server) -> None:
    """Each frame is sent as a PNG of its own carrying the frame's dpi; each comes back as a page."""
    server = await fake_server()
    inp, out = tmp_path / "in", tmp_path / "out"
    data = write_big_endian_scan(inp)
    sent = list(tiff.frames_as_png(data, "big-endian.tif"))
    assert [round(Image.open(io.BytesIO(png)).info["dpi"][0]) for png in sent] == [
        dpi for _, dpi in BIG_ENDIAN_PAGES
    ]
    proc = await run_pipeline_process(run_args(inp, out, server.url, "--progress", "off"),
                                      pipeline_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hashes = [hashlib.sha256(png).hexdigest() for png in sent]
    assert server.stats.ok_by_document == dict.fromkeys(hashes, 1)
    pages = load_json(out / "big-endian.tif.json")["pages"]
    assert [p["index"] for p in pages] == [0, 1, 2]
    assert [p["markdown"] for p in pages] == [f"Fake OCR text of image {h[:12]}." for h in hashes]
    assert [(p["dimensions"]["width"], p["dimensions"]["height"]) for p in pages] == [
        Image.open(io.BytesIO(png)).size for png in sent
    ]


# ---- one owner for TIFF frames, each frame's resolution kept -----------------------------------


def test_each_frame_keeps_its_own_resolution_even_after_a_frame_with_none() -> None:
    """Pillow's info['dpi'] keeps an earlier frame's value; the frame's own tags must win."""
    page = Image.new("L", (30, 30), 255)
    data = tiff_bytes([(page, (300, 300)), (page, (200, 200)), (page, None)])
    assert [f.dpi for f in tiff.frames(data, "t.tif")] == [(300.0, 300.0), (200.0, 200.0), None]
    # The local engine reading the TIFF itself (a chunk that is a TIFF) sees the same values.
    img = images.open_image(data, "image/tiff", 10**9)
    seen = []
    for index in range(images.frame_count(img)):
        _, dpi = images.load_frame(img, index, "image/tiff", 10**9)
        seen.append((dpi, images.header_dpi(img)))
    assert seen == [(300, 300), (200, 200), (None, None)]


def test_the_sample_tiff_frames_reach_the_engine_at_200_dpi() -> None:
    data = SAMPLE_TIFF.read_bytes()
    assert dpis_of_png_frames(data) == [200, 200]
    chunks = list(iter_chunks(SAMPLE_TIFF, "scanned-2pages.tif", "image/tiff",
                              max_pages=10, max_bytes=10**8))
    assert [(c.first_page, c.media_type) for c in chunks] == [(0, "image/png"), (1, "image/png")]
    assert [Image.open(io.BytesIO(c.data)).info["dpi"][0] for c in chunks] == [
        pytest.approx(200, abs=0.01)
    ] * 2


def test_a_frame_without_resolution_gives_a_png_without_one() -> None:
    data = tiff_bytes([(Image.new("L", (10, 10), 255), None)])
    (png,) = tiff.frames_as_png(data, "t.tif")
    assert "dpi" not in Image.open(io.BytesIO(png)).info


# ---- encrypted, no /ID, blank pages ------------------------------------------------------------


def test_an_encrypted_blank_pdf_without_id_opens_as_blank_pages() -> None:
    data = hostile.encrypted_blank_pdf_without_id(pages=2)
    opened = open_pdf(data, "blank.pdf")
    try:
        assert opened.pages == 2 and opened.encrypted
        assert any("/ID" in note for note in opened.repair_notes), opened.repair_notes
    finally:
        opened.pdf.close()


def test_a_repair_that_loses_page_content_is_still_refused() -> None:
    good = pdf_bytes(["first page text", "second page text"])
    cut = good[: good.index(b"stream")]  # page objects kept, their content streams cut off
    with pytest.raises(InputError, match="content is missing"):
        open_pdf(cut, "cut.pdf")


# ---- end to end through the local engine -------------------------------------------------------


def test_real_world_files_go_through_the_local_engine(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(SAMPLE_TIFF, inp / "scanned-2pages.tif")
    (inp / "big.tif").write_bytes(tiff_bytes(
        [(page_image("Harbour Notes", 150), (150, 150)), (page_image("Station Log", 200), (200, 200))],
        big=True,
    ))
    (inp / "blank-encrypted.pdf").write_bytes(hostile.encrypted_blank_pdf_without_id(pages=2))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(REPO / "config/default.yaml"),
         "--input", str(inp), "--output", str(out), "--progress", "off"],
        capture_output=True, text=True, cwd=REPO, env=pipeline_env(None), timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def pages(name: str) -> list[dict]:
        return json.loads((out / f"{name}.json").read_text())["pages"]

    sample = pages("scanned-2pages.tif")
    assert [p["dimensions"]["dpi"] for p in sample] == [200, 200]
    assert "Weekly Bulletin" in sample[0]["markdown"] and "Annual Review" in sample[1]["markdown"]

    big = pages("big.tif")
    assert [p["dimensions"]["dpi"] for p in big] == [150, 200]
    assert "Harbour Notes" in big[0]["markdown"] and "Station Log" in big[1]["markdown"]

    blank = pages("blank-encrypted.pdf")
    assert [p["markdown"] for p in blank] == ["", ""]
    assert (out / "blank-encrypted.pdf.md").is_file()


# ---- stable failure messages -------------------------------------------------------------------


NO_KIDS_PDF = hostile.raw_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages >>"])


def _message(fn, *args) -> str:
    with pytest.raises(InputError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize(
    "fail",
    [
        pytest.param(lambda: open_pdf(NO_KIDS_PDF, "nokids.pdf"), id="pdf-without-kids"),
        pytest.param(lambda: open_pdf(hostile.cyclic_page_tree_pdf("x"), "loop.pdf"), id="page-tree-loop"),
        pytest.param(lambda: list(tiff.frames(b"II*\x00" + b"\xff" * 64, "junk.tif")), id="tiff-junk"),
        pytest.param(lambda: images.load_frame(
            images.open_image(png_bytes()[:60], "image/png", 10**9), 0, "image/png", 10**9),
            id="truncated-png"),
    ],
)
def test_failure_messages_are_the_same_on_every_run(fail) -> None:
    first, second = _message(fail), _message(fail)
    assert first == second
    assert not ADDRESS.search(first), first
    assert "object at" not in first and "<_io" not in first


def test_qpdf_and_pillow_texts_lose_the_stream_repr_but_keep_the_location() -> None:
    assert stable_text(
        "stream <_io.BytesIO object at 0x7f5627537650>: root of pages tree has no /Kids array"
    ) == "root of pages tree has no /Kids array"
    assert stable_text(
        "stream <_io.BytesIO object at 0x7f56274e1120> (object 1 0, offset 52): expected n n obj"
    ) == "object 1 0, offset 52: expected n n obj"
    assert exception_text(OSError("cannot identify image file <_io.BytesIO object at 0x7f95>")) == (
        "cannot identify image file"
    )
    assert exception_text(ValueError()) == "ValueError"


def test_a_stored_failure_message_has_no_memory_address(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "nokids.pdf").write_bytes(NO_KIDS_PDF)
    (inp / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    messages = []
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--config", str(REPO / "config/default.yaml"),
             "--input", str(inp), "--output", str(out), "--progress", "off", "--retry-failed"],
            capture_output=True, text=True, cwd=REPO, env=pipeline_env(None), timeout=60,
        )
        status = subprocess.run(
            [sys.executable, "-m", "pipeline", "status", "--output", str(out), "--json"],
            capture_output=True, text=True, cwd=REPO, env=pipeline_env(None), timeout=60,
        )
        failures = {f["path"]: f["message"] for f in json.loads(status.stdout)["failures"]}
        assert set(failures) == {"nokids.pdf", "junk.tif"}, failures
        messages.append(failures)
    assert messages[0] == messages[1]
    for message in messages[0].values():
        assert not ADDRESS.search(message) and "object at" not in message, message
