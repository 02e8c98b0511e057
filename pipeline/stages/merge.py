"""Check chunk responses and merge them back into one document response.

Page `index` becomes the page's 0-based position in the source document. Image ids, which the
service numbers per request, are renamed `img-<n><ext>` across the whole document (safe as file
names whatever the server sent); the server's id is kept as `source_id` and the markdown links are
rewritten to the new ids.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.models import Chunk

_SAFE_EXT = re.compile(r"\.([A-Za-z0-9]{1,5})$")


def _safe_image_id(number: int, source_id: str) -> str:
    match = _SAFE_EXT.search(source_id or "")
    ext = match.group(1).lower() if match else "bin"
    return f"img-{number}.{ext}"


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _rewrite_links(markdown: str, renames: dict[str, str]) -> str:
    """Point `![alt](target)` links at the renamed ids (the alt too, when it is the id)."""
    if not renames:
        return markdown

    def sub(m: re.Match[str]) -> str:
        bang, alt, target = m.groups()
        return f"{bang}[{renames.get(alt, alt)}]({renames.get(target, target)})"

    return _LINK.sub(sub, markdown)


def _usage_int(response: dict[str, Any], key: str, default: int) -> int:
    """A usage figure, or `default` when the service sent none or nonsense (never fatal)."""
    usage = response.get("usage_info")
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(value)


def merge_responses(chunks: list[tuple[Chunk, dict[str, Any]]]) -> dict[str, Any]:
    """Merge (chunk, response) pairs given in page order into one OCRResponse."""
    merged: dict[str, Any] = {}
    pages_out: list[dict[str, Any]] = []
    image_number = 0
    pages_processed = 0
    doc_size = 0
    for chunk, response in chunks:
        for key, value in response.items():
            if key not in ("pages", "usage_info") and key not in merged:
                merged[key] = value  # model, document_annotation, unknown fields: first wins
        pages = sorted(
            response["pages"], key=lambda p: p.get("index", 0) if isinstance(p, dict) else 0
        )
        for offset, page in enumerate(pages):
            page = dict(page)
            page["index"] = chunk.first_page + offset
            renames: dict[str, str] = {}
            images = []
            for image in page.get("images") or []:
                if not isinstance(image, dict):
                    continue
                image = dict(image)
                source_id = str(image.get("id", ""))
                new_id = _safe_image_id(image_number, source_id)
                image_number += 1
                renames[source_id] = new_id
                image["source_id"] = source_id
                image["id"] = new_id
                images.append(image)
            page["images"] = images
            page["markdown"] = _rewrite_links(page["markdown"], renames)
            pages_out.append(page)
        pages_processed += _usage_int(response, "pages_processed", len(pages))
        doc_size += _usage_int(response, "doc_size_bytes", 0)
    merged["pages"] = pages_out
    merged["usage_info"] = {"pages_processed": pages_processed, "doc_size_bytes": doc_size}
    return merged
