"""Build the OCRResponse body from pages, with the synthetic images the options ask for."""

from __future__ import annotations

import base64
from typing import Any

from pipeline.fakeserver.documents import DPI, Page
from pipeline.fakeserver.rich import RichRequest, enrich

# A valid 8x8 JPEG (287 bytes), the pixels of every synthetic image.
TINY_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRT"
    "c4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAIAAgDASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAAAAX/xAAU"
    "EAEAAAAAAAAAAAAAAAAAAAAA/8QAFQEBAQAAAAAAAAAAAAAAAAAABAb/xAAUEQEAAAAAAAAAAAAAAAAAAAAA/9oADAMB"
    "AAIRAxEAPwCWAEpn/9k="
)
TINY_JPEG_DATA_URL = "data:image/jpeg;base64," + base64.b64encode(TINY_JPEG).decode("ascii")
_BOX = 100  # side of each synthetic image's bounding box, in pixels


def image_id(k: int, style: str) -> str:
    """Id of the k-th image of a response; "hostile" ids try to escape an output folder."""
    if style == "hostile":
        return f"../../escape-{k}.jpeg" if k % 2 == 0 else f"/tmp/abs-{k}.jpeg"
    return f"img-{k}.jpeg"


def ocr_response(
    pages: list[Page],
    *,
    model: str,
    doc_size: int,
    images_per_page: int = 0,
    image_id_style: str = "normal",
    include_image_base64: bool = False,
    image_limit: int | None = None,
    rich: RichRequest | None = None,
) -> dict[str, Any]:
    """The OCRResponse for `pages`; image ids are numbered across the whole response; `rich`:
    what the newer models add (tables, header/footer, confidence, blocks, annotations)."""
    budget = images_per_page * len(pages)
    if image_limit is not None:
        budget = min(budget, max(0, image_limit))
    next_id = 0
    out_pages = []
    for page in pages:
        count = min(images_per_page, budget - next_id)
        images = [
            _image(image_id(next_id + j, image_id_style), j, page, include_image_base64)
            for j in range(count)
        ]
        next_id += count
        markdown = page.markdown
        if images:
            markdown += "".join(f"\n\n![{im['id']}]({im['id']})" for im in images)
        dimensions = (
            {"dpi": DPI, "height": page.height, "width": page.width}
            if page.width is not None and page.height is not None
            else None
        )
        out_pages.append({
            "index": page.index,
            "markdown": markdown,
            "images": images,
            "dimensions": dimensions,
        })
    answer = {
        "pages": out_pages,
        "model": model,
        "usage_info": {"pages_processed": len(pages), "doc_size_bytes": doc_size},
        "document_annotation": None,
    }
    if rich is not None:
        enrich(answer, rich)
    return answer


def _image(id_: str, j: int, page: Page, include_base64: bool) -> dict[str, Any]:
    """Image j of a page: boxes stacked down the page, kept inside it when its size is known."""
    width = page.width or 10 * _BOX
    height = page.height or 10 * _BOX
    left = min(_BOX // 2, max(0, width - _BOX))
    top = (_BOX // 2 + j * (_BOX + 10)) % max(1, height - _BOX)
    return {
        "id": id_,
        "top_left_x": left,
        "top_left_y": top,
        "bottom_right_x": min(width, left + _BOX),
        "bottom_right_y": min(height, top + _BOX),
        "image_base64": TINY_JPEG_DATA_URL if include_base64 else None,
        "image_annotation": None,
    }
