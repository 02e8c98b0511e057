"""What runs inside the pool's worker processes: one page at a time, in and out as plain data.

Each call opens its input from bytes, handles one page (or, for the text-layer pass, reads every
page's text without rendering), and returns plain dicts in a `WorkerOutcome`. Failures come back
as data too (`WorkerFailure`): the error classes carry keyword arguments that do not survive
pickling, and a worker must never die of a bad document.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backends.local import columns, images, layout, render, textlayer
from pipeline.backends.local.engine import Engine
from pipeline.backends.local.langdata import has_osd, parse_languages, resolve_tessdata
from pipeline.backends.local.orientation import recognize_upright, turn
from pipeline.errors import EncryptedError, InputError, PipelineError, TooLargeError


@dataclass(frozen=True)
class WorkerFailure:
    """A `PipelineError` raised in a worker, as data: its class name, message and hint."""

    kind: str
    message: str
    hint: str | None


@dataclass(frozen=True)
class WorkerOutcome:
    """A worker call's result, or the failure that stopped it."""

    value: Any = None
    failure: WorkerFailure | None = None


Outcome = WorkerOutcome


@dataclass(frozen=True)
class WorkerConfig:
    tessdata: str  # "" on a cluster: each worker resolves its own (TESSDATA_PREFIX, the package)
    language: str
    dpi: int
    force_ocr: bool
    max_pixels: int
    # Output options of the run (`outputs:`), as the hosted API takes them: the running header and
    # footer leave the markdown only when asked; typed blocks (and the pictures they point at)
    # only when asked; a picture's pixels only with include_images.
    extract_header: bool = False
    extract_footer: bool = False
    include_blocks: bool = False
    include_images: bool = False


class _ThreadEngine(threading.local):
    """One Tesseract per thread: a pool process has one thread, but a Dask worker started with
    `--nthreads N` runs N tasks at once in one process, and a PyTessBaseAPI is not shareable."""

    engine: Engine | None = None
    key: tuple[str, str] | None = None


_THREAD = _ThreadEngine()


def engine(cfg: WorkerConfig) -> Engine:
    """This thread's Tesseract, created on first use and kept for every later page."""
    key = (cfg.tessdata, cfg.language)
    if _THREAD.engine is None or key != _THREAD.key:
        if _THREAD.engine is not None:
            _THREAD.engine.close()
        folder = Path(cfg.tessdata) if cfg.tessdata else resolve_tessdata(None)[0]
        _THREAD.engine = Engine(folder, cfg.language)
        _THREAD.key = key
    return _THREAD.engine


def warm_up(cfg: WorkerConfig) -> Outcome:
    engine(cfg)
    return WorkerOutcome()


def probe(language: str, tessdata_path: str | None) -> dict[str, Any]:
    """What a cluster worker has (run on each one before any work): the pipeline's version and
    which of `language`'s models its tessdata folder lacks. Never raises: the client decides."""
    from pipeline import __version__

    found: dict[str, Any] = {"version": __version__, "tessdata": None, "missing": [], "osd": False,
                             "problem": None}
    try:
        folder, source = resolve_tessdata(tessdata_path)
    except PipelineError as exc:
        found["problem"] = exc.message
        return found
    found["tessdata"] = f"{folder} (from {source})"
    found["missing"] = [
        lang for lang in parse_languages(language) if not (folder / f"{lang}.traineddata").is_file()
    ]
    found["osd"] = has_osd(folder)
    return found


def hold(data: bytes) -> bytes:
    """A chunk's bytes as a cluster task of their own: every page task of the chunk depends on it
    (sent to the cluster once, not once per page), and it is recomputed if its worker dies."""
    return data


def _guard(fn: Any, *args: Any) -> Outcome:
    try:
        return WorkerOutcome(fn(*args))
    except PipelineError as exc:
        return WorkerOutcome(failure=WorkerFailure(type(exc).__name__, exc.message, exc.hint))


def _page(
    index: int,
    markdown: str,
    width: int,
    height: int,
    dpi: int,
    method: str,
    confidence: float | None,
    rotation: int,
    header: str | None = None,
    footer: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    page = {
        "index": index,
        "markdown": markdown,
        "images": [],
        "dimensions": {"dpi": dpi, "height": height, "width": width},
        "header": header,
        "footer": footer,
        "method": method,
        "confidence": None if confidence is None else round(confidence, 2),
        "rotation": rotation,
    }
    page.update(extra or {})
    return page


# --- PDF ---------------------------------------------------------------------------------------


def scan_pdf(data: bytes, cfg: WorkerConfig) -> Outcome:
    """Text-layer pass over every page: returns (page count, text pages, pages to OCR)."""
    return _guard(_scan_pdf, data, cfg)


def _scan_pdf(data: bytes, cfg: WorkerConfig) -> tuple[int, list[dict[str, Any]], list[int]]:
    doc = render.open_pdf(data)
    try:
        count = len(doc)
        if count == 0:
            raise InputError("the PDF has no pages", hint="check the source file")
        done: list[dict[str, Any]] = []
        todo: list[int] = []
        for i in range(count):
            page = doc[i]
            try:
                width, height = render.page_pixels(page, cfg.dpi)
                found = None if cfg.force_ocr else textlayer.extract(page, cfg.dpi)
                if found is not None:
                    done.append(_text_page(i, found[1], width, height, cfg))
                    continue
                # Refuse oversized pages now, before any other page is OCR'd for nothing.
                if width * height > cfg.max_pixels:
                    raise images.too_large(f"page {i + 1} at {cfg.dpi} dpi", width, height, cfg.max_pixels)
                todo.append(i)
            finally:
                page.close()
        return count, done, todo
    finally:
        doc.close()


def _text_page(index: int, blocks: list[layout.Block], width: int, height: int,
               cfg: WorkerConfig) -> dict[str, Any]:
    """A page read from its text layer (no running header/footer is told apart there)."""
    found = layout.parts(blocks)
    md = "\n\n".join(p.text for p in found)
    extra = {"blocks": layout.api_blocks(found, width, height)} if cfg.include_blocks else None
    return _page(index, md, width, height, cfg.dpi, "text_layer", None, 0, extra=extra)


def ocr_pdf_page(data: bytes, index: int, cfg: WorkerConfig) -> Outcome:
    return _guard(_ocr_pdf_page, data, index, cfg)


def _ocr_pdf_page(data: bytes, index: int, cfg: WorkerConfig) -> dict[str, Any]:
    doc = render.open_pdf(data)
    try:
        page = doc[index]
        try:
            image = render.render_page(page, cfg.dpi, cfg.max_pixels)
        finally:
            page.close()
    finally:
        doc.close()
    return _ocr_image(image, index, cfg.dpi, cfg.dpi, cfg)


# --- images ------------------------------------------------------------------------------------


def scan_image(data: bytes, media_type: str, cfg: WorkerConfig) -> Outcome:
    """Header check (size limit, readable) and the number of pages (TIFF frames)."""
    return _guard(_scan_image, data, media_type, cfg)


def _scan_image(data: bytes, media_type: str, cfg: WorkerConfig) -> int:
    img = images.open_image(data, media_type, cfg.max_pixels)
    try:
        return images.frame_count(img)
    finally:
        img.close()


def ocr_image_page(data: bytes, media_type: str, index: int, cfg: WorkerConfig) -> Outcome:
    return _guard(_ocr_image_page, data, media_type, index, cfg)


def _ocr_image_page(data: bytes, media_type: str, index: int, cfg: WorkerConfig) -> dict[str, Any]:
    img = images.open_image(data, media_type, cfg.max_pixels)
    try:
        frame, dpi = images.load_frame(img, index, media_type, cfg.max_pixels)
        return _ocr_image(frame, index, dpi, images.header_dpi(img) or 72, cfg)
    finally:
        img.close()


def _ocr_image(image: Any, index: int, dpi: int | None, report_dpi: int, cfg: WorkerConfig) -> dict[str, Any]:
    rec, rotation = recognize_upright(engine(cfg), image, dpi)
    got = layout.page_text(rec.blocks, header=cfg.extract_header, footer=cfg.extract_footer)
    width, height = image.size
    if rotation in (90, 270):
        width, height = height, width
    extra = None
    if cfg.include_blocks:
        pictures = _pictures(turn(image, rotation), dpi, cfg.include_images)
        found = _with_pictures(layout.api_blocks(got.parts, width, height), pictures, width, height)
        extra = {"blocks": found, "images": [p for p, _ in pictures]}
    return _page(index, got.markdown, width, height, report_dpi, "ocr", rec.confidence, rotation,
                 got.header, got.footer, extra)


def _with_pictures(blocks: list[dict[str, Any]], pictures: list[tuple[dict[str, Any], tuple[int, ...]]],
                   width: int, height: int) -> list[dict[str, Any]]:
    """Image blocks into the reading order: right before the caption below the picture, else
    before the footer."""
    out = list(blocks)
    for entry, box in pictures:
        block = {"type": "image", "content": "", "image_id": entry["id"],
                 **layout.box_fields(box, width, height)}
        captions = [i for i, b in enumerate(out) if b["type"] == "caption" and b["top_left_y"] >= box[3] - 5
                    and b["top_left_x"] < box[2] and b["bottom_right_x"] > box[0]]
        at = min(captions, key=lambda i: out[i]["top_left_y"]) if captions else next(
            (i for i, b in enumerate(out) if b["type"] == "footer"), len(out))
        out.insert(at, block)
    return out


def _pictures(image: Any, dpi: int | None, with_pixels: bool) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    """Photos and figures on the upright page as the API's image entries (the crop as a JPEG data
    URL with `include_images`), each with its box."""
    gray = np.asarray(image.convert("L"))
    out = []
    for n, box in enumerate(columns.pictures(gray, dpi or 300)):
        entry: dict[str, Any] = {"id": f"img-{n}.jpeg", **layout.box_fields(box, *image.size),
                                 "image_base64": None}
        if with_pixels:
            buf = io.BytesIO()
            image.crop(box).convert("RGB").save(buf, "JPEG", quality=85)
            entry["image_base64"] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append((entry, box))
    return out


ERRORS: dict[str, type[PipelineError]] = {
    "InputError": InputError,
    "TooLargeError": TooLargeError,
    "EncryptedError": EncryptedError,
}
