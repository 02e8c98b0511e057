"""Discovery and sniffing: type from content, globs, hidden files, symlinks, odd files, order."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.models import SourceFile
from pipeline.stages.discover import Skipped, discover
from pipeline.stages.sniff import sniff
from tests.forked import run_forked
from tests.pdfgen import jpeg_bytes, pdf_bytes, png_bytes

PDF = "application/pdf"


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), "red").save(buf, format=fmt)
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def found(root: Path, **kwargs: Any) -> dict[str, SourceFile]:
    return {x.rel: x for x in discover(root, **kwargs) if isinstance(x, SourceFile)}


def skipped(root: Path, **kwargs: Any) -> dict[str, Skipped]:
    return {x.rel: x for x in discover(root, **kwargs) if isinstance(x, Skipped)}




# ---- sniffing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (pdf_bytes(["x"]), PDF),
        (b"\xef\xbb\xbf%PDF-1.7\n", PDF),  # junk (a BOM) before the header
        (png_bytes(), "image/png"),
        (jpeg_bytes(), "image/jpeg"),
        (image_bytes("TIFF"), "image/tiff"),
        (image_bytes("WEBP"), "image/webp"),
        (image_bytes("GIF"), "image/gif"),
        (image_bytes("BMP"), "image/bmp"),
        (b"hello world, these are notes\n", None),
        (b"", None),
        (b"BM", None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),  # a RIFF that is audio, not WebP
    ],
)
def test_sniff_reads_magic_bytes(head: bytes, expected: str | None) -> None:
    assert sniff(head[:1024]) == expected


def test_text_starting_with_the_letters_bm_is_not_a_bitmap(tmp_path: Path) -> None:
    # "BM" alone is no proof: a real BMP header carries a DIB header size at offset 14.
    notes = b"BMW service history for the fleet, 2019-2024\nOil change every 15,000 km.\n"
    assert sniff(notes) is None
    put(tmp_path, "notes.txt", notes)
    assert found(tmp_path) == {}
    entry = skipped(tmp_path)["notes.txt"]
    assert entry.failure is False


def test_type_comes_from_content_not_from_the_extension(tmp_path: Path) -> None:
    put(tmp_path, "real.pdf", pdf_bytes(["real"]))
    put(tmp_path, "pic.png", png_bytes())
    put(tmp_path, "photo.jpg", jpeg_bytes())
    put(tmp_path, "scan.tif", image_bytes("TIFF"))
    put(tmp_path, "img.webp", image_bytes("WEBP"))
    put(tmp_path, "anim.gif", image_bytes("GIF"))
    put(tmp_path, "old.bmp", image_bytes("BMP"))
    put(tmp_path, "mislabelled.pdf", png_bytes())  # a PNG named .pdf
    put(tmp_path, "actually-pdf.png", pdf_bytes(["pdf"]))  # a PDF named .png
    put(tmp_path, "no_extension", jpeg_bytes())
    types = {rel: f.media_type for rel, f in found(tmp_path).items()}
    assert types == {
        "real.pdf": PDF,
        "pic.png": "image/png",
        "photo.jpg": "image/jpeg",
        "scan.tif": "image/tiff",
        "img.webp": "image/webp",
        "anim.gif": "image/gif",
        "old.bmp": "image/bmp",
        "mislabelled.pdf": "image/png",
        "actually-pdf.png": PDF,
        "no_extension": "image/jpeg",
    }


def test_source_file_carries_path_size_and_mtime(tmp_path: Path) -> None:
    path = put(tmp_path, "sub/doc.pdf", pdf_bytes(["a", "b"]))
    src = found(tmp_path)["sub/doc.pdf"]
    st = path.stat()
    assert src.path == path.resolve()
    assert (src.size, src.mtime_ns) == (st.st_size, st.st_mtime_ns)


# ---- selection --------------------------------------------------------------------------------


def make_selection_tree(root: Path) -> None:
    for rel in ["a.pdf", "x/b.pdf", "x/y/c.pdf", "drafts/d.pdf", "drafts/sub/e.pdf"]:
        put(root, rel, pdf_bytes([rel]))
    for rel in ["top.png", "x/pic.png", "drafts/f.png"]:
        put(root, rel, png_bytes())


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    make_selection_tree(tmp_path)
    pdfs = found(tmp_path, include=["**/*.pdf"], exclude=["drafts/**"])
    assert set(pdfs) == {"a.pdf", "x/b.pdf", "x/y/c.pdf"}
    pngs = found(tmp_path, include=["*.png"])
    assert set(pngs) == {"top.png", "x/pic.png", "drafts/f.png"}
    everything = found(tmp_path)
    assert len(everything) == 8
    no_drafts = found(tmp_path, exclude=["drafts/**"])
    assert set(no_drafts) == {"a.pdf", "x/b.pdf", "x/y/c.pdf", "top.png", "x/pic.png"}
    # Excluded files are not even reported as skipped.
    assert not any(rel.startswith("drafts/") for rel in skipped(tmp_path, exclude=["drafts/**"]))


def test_hidden_files_and_folders_are_not_entered(tmp_path: Path) -> None:
    put(tmp_path, "visible.pdf", pdf_bytes(["v"]))
    put(tmp_path, ".hidden.pdf", pdf_bytes(["h"]))
    put(tmp_path, ".git/objects/x.pdf", pdf_bytes(["g"]))
    put(tmp_path, "sub/.cache/y.png", png_bytes())
    entries = list(discover(tmp_path))
    assert [e.rel for e in entries] == ["visible.pdf"]


def test_output_folder_inside_the_input_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "in"
    put(root, "doc.pdf", pdf_bytes(["d"]))
    put(root, "out/doc.pdf.json", b'{"pages": []}')
    put(root, "out/copy.pdf", pdf_bytes(["copy"]))
    assert set(found(root)) == {"doc.pdf", "out/copy.pdf"}  # without skip_dirs it is walked
    entries = list(discover(root, skip_dirs=[root / "out"]))
    assert [e.rel for e in entries] == ["doc.pdf"]


# ---- symlinks ---------------------------------------------------------------------------------


def make_link_tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    put(root, "real.pdf", pdf_bytes(["real"]))
    put(root, "sub/inner.png", png_bytes())
    put(tmp_path, "outside/secret.pdf", pdf_bytes(["secret"]))
    os.symlink(root / "real.pdf", root / "link.pdf")
    os.symlink(root / "sub", root / "sublink")  # sorts after the real folder
    os.symlink(tmp_path / "outside/secret.pdf", root / "escape.pdf")
    os.symlink(tmp_path / "outside", root / "escapedir")
    return root


def test_symlinks_are_not_followed_by_default(tmp_path: Path) -> None:
    root = make_link_tree(tmp_path)
    assert set(found(root)) == {"real.pdf", "sub/inner.png"}


def test_followed_symlinks_reach_outside_and_never_alias_inside_files(tmp_path: Path) -> None:
    root = make_link_tree(tmp_path)
    files = found(root, follow_symlinks=True)
    # Links out of the root are what the option is for; links to files and folders inside the
    # root would process (and pay for) the same document twice.
    assert set(files) == {"real.pdf", "sub/inner.png", "escape.pdf", "escapedir/secret.pdf"}
    assert files["escape.pdf"].media_type == PDF
    skips = skipped(root, follow_symlinks=True)
    assert skips["link.pdf"].failure is False and "real path" in skips["link.pdf"].reason
    assert skips["sublink"].failure is False


def test_following_symlinks_only_adds_files_never_moves_real_ones(tmp_path: Path) -> None:
    # A link to a folder inside the root must not take the place of the real folder: the
    # documents keep their real paths (and so their outputs and manifest rows).
    root = tmp_path / "in"
    put(root, "sub/inner.png", png_bytes())
    put(root, "zz/deep/doc.pdf", pdf_bytes(["deep"]))
    os.symlink(root / "sub", root / "a-link-to-sub")
    os.symlink(root / "zz" / "deep", root / "b-link-to-deep")
    plain = found(root)
    followed = found(root, follow_symlinks=True)
    assert set(plain) == {"sub/inner.png", "zz/deep/doc.pdf"}
    assert set(plain) <= set(followed)


def _discover_bounded(root: Path, **kwargs: Any) -> list[SourceFile | Skipped]:
    """At most 1,000 entries, on a worker thread with a time limit: a loop must not hang the test."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: list(itertools.islice(discover(root, **kwargs), 1000)))
        return future.result(timeout=20)


def test_folder_symlink_loops_terminate(tmp_path: Path) -> None:
    root = tmp_path / "in"
    put(root, "real.pdf", pdf_bytes(["real"]))
    put(root, "sub/deep.pdf", pdf_bytes(["deep"]))
    os.symlink(".", root / "again")
    os.symlink("..", root / "sub" / "up")
    entries = _discover_bounded(root, follow_symlinks=True)
    rels = [e.rel for e in entries if isinstance(e, SourceFile)]
    assert sorted(rels) == ["real.pdf", "sub/deep.pdf"]  # each folder walked once


def test_self_referencing_symlinks_do_not_stop_discovery(tmp_path: Path) -> None:
    root = tmp_path / "in"
    put(root, "real.pdf", pdf_bytes(["real"]))
    os.symlink("self.pdf", root / "self.pdf")  # a link to itself
    os.symlink("ping.pdf", root / "pong.pdf")  # two links pointing at each other
    os.symlink("pong.pdf", root / "ping.pdf")
    put(root, "z-last.pdf", pdf_bytes(["last"]))
    entries = _discover_bounded(root, follow_symlinks=True)
    rels = {e.rel for e in entries if isinstance(e, SourceFile)}
    assert rels == {"real.pdf", "z-last.pdf"}  # files after the loops are still found


# ---- odd files ------------------------------------------------------------------------------------


def test_a_fifo_is_listed_as_ignored_and_never_opened(tmp_path: Path) -> None:
    put(tmp_path, "doc.pdf", pdf_bytes(["d"]))
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)
    try:
        entries = _discover_bounded(tmp_path)
    finally:
        # If discovery blocked opening the FIFO for reading, release it.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    by_rel = {e.rel: e for e in entries}
    assert isinstance(by_rel["doc.pdf"], SourceFile)
    entry = by_rel["pipe.pdf"]
    assert isinstance(entry, Skipped)
    assert entry.failure is False


def test_empty_files_fail_only_when_named_like_a_document(tmp_path: Path) -> None:
    put(tmp_path, "empty.pdf", b"")
    put(tmp_path, "empty.txt", b"")
    put(tmp_path, "notes.txt", b"just some notes\n")
    put(tmp_path, "garbage.pdf", b"this is not a pdf at all\n" * 10)
    skips = skipped(tmp_path)
    assert found(tmp_path) == {}
    assert skips["empty.pdf"].failure is True
    assert skips["empty.pdf"].category == "input"
    assert "empty" in skips["empty.pdf"].reason
    assert skips["empty.txt"].failure is False
    assert skips["notes.txt"].failure is False
    assert skips["garbage.pdf"].failure is True
    assert ".pdf" in skips["garbage.pdf"].reason


def test_an_unreadable_file_is_a_failure_that_mentions_permissions() -> None:
    # A world-traversable folder outside pytest's private tmp, so an unprivileged child can look.
    root = Path(tempfile.mkdtemp(prefix="ocr-discover-"))
    try:
        os.chmod(root, 0o755)
        put(root, "ok.pdf", pdf_bytes(["ok"]))
        locked = put(root, "locked.pdf", pdf_bytes(["locked"]))
        os.chmod(root / "ok.pdf", 0o644)
        os.chmod(locked, 0o000)
        try:
            with open(locked, "rb"):
                privileged = True  # root (CAP_DAC_OVERRIDE): mode 000 is still readable
        except PermissionError:
            privileged = False
        if privileged:
            # Root reads it, so discovery must find it as an ordinary document...
            assert found(root)["locked.pdf"].media_type == PDF
            # ...and an unprivileged user gets the permissions failure.
            entries = run_forked(lambda: list(discover(root)))
        else:
            entries = list(discover(root))
        by_rel = {e.rel: e for e in entries}
        assert isinstance(by_rel["ok.pdf"], SourceFile)
        entry = by_rel["locked.pdf"]
        assert isinstance(entry, Skipped)
        assert entry.failure is True
        assert "permission" in entry.reason.lower()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- order ------------------------------------------------------------------------------------


def test_order_is_stable_and_independent_of_creation_order(tmp_path: Path) -> None:
    names = ["b.pdf", "a/z.pdf", "a/c.png", "c.png", "a.pdf", "B.pdf", "a/b/x.pdf", "d/e.pdf"]
    first, second = tmp_path / "one", tmp_path / "two"
    for rel in names:
        put(first, rel, pdf_bytes([rel]))
    for rel in reversed(names):
        put(second, rel, pdf_bytes([rel]))
    order_one = [e.rel for e in discover(first)]
    assert order_one == [e.rel for e in discover(first)]
    assert order_one == [e.rel for e in discover(second)]
    assert sorted(order_one) == sorted(names)
    top_level = [rel for rel in order_one if "/" not in rel]
    assert top_level == sorted(top_level)
