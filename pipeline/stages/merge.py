"""Check chunk responses and merge them back into one document response.

Page `index` becomes the page's 0-based position in the source document. Image and table ids,
which the service numbers per request, are renamed across the whole document (`img-<n><ext>`,
`tbl-<n>.html|.md`: safe as file names whatever the server sent); the server's id is kept as
`source_id`, and the markdown links and the blocks' `image_id` / `table_id` follow the new ids.
The local engine's page `confidence` gets the API's `confidence_scores` shape
(`stages/confidence.py`). Each chunk's `document_annotation` is kept with its page range in
`document_annotations` (`stages/annotations.py`): a split document has one per chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pipeline.models import Chunk
from pipeline.stages.annotations import check_against, chunk_annotation
from pipeline.stages.confidence import normalise_page
from pipeline.stages.markdown_links import rewrite_links

_SAFE_EXT = re.compile(r"\.([A-Za-z0-9]{1,5})$")
TABLE_EXT = {"html": "html", "markdown": "md"}


def _safe_image_id(number: int, source_id: str) -> str:
    match = _SAFE_EXT.search(source_id or "")
    ext = match.group(1).lower() if match else "bin"
    return f"img-{number}.{ext}"


def _safe_table_id(number: int, table: dict[str, Any]) -> str:
    ext = TABLE_EXT.get(str(table.get("format")))
    if ext is None:
        match = _SAFE_EXT.search(str(table.get("id") or ""))
        ext = "html" if match and match.group(1).lower() in ("html", "htm") else "md"
    return f"tbl-{number}.{ext}"


def _rewrite_links(markdown: str, renames: dict[str, str]) -> str:
    """Point `![alt](target)` and `[alt](target)` links at the renamed ids (the alt too, when it
    is the id)."""
    if not renames:
        return markdown

    def sub(m: re.Match[str]) -> str:
        bang, alt, target = m.groups()
        return f"{bang}[{renames.get(alt, alt)}]({renames.get(target, target)})"

    return rewrite_links(markdown, sub)


def _usage_int(response: dict[str, Any], key: str, default: int) -> int:
    """A usage figure, or `default` when the service sent none or nonsense (never fatal)."""
    usage = response.get("usage_info")
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return int(value)


class _Numbering:
    """Document-wide counters for image and table ids."""

    def __init__(self) -> None:
        self.counts = {"images": 0, "tables": 0}

    def _renumber(self, items: list[Any], kind: str, new_id: Callable[[int, dict[str, Any]], str],
                  renames: dict[str, str]) -> list[dict[str, Any]]:
        """Copies of the dict items with document-wide ids; the server's id kept as `source_id`."""
        renamed = []
        for item in items:
            if not isinstance(item, dict):
                continue
            item = dict(item)
            source_id = str(item.get("id", ""))
            item["source_id"], item["id"] = source_id, new_id(self.counts[kind], item)
            self.counts[kind] += 1
            renames[source_id] = item["id"]
            renamed.append(item)
        return renamed

    def renumber(self, page: dict[str, Any]) -> dict[str, str]:
        """Rename the page's images and tables; return server id -> new id."""
        renames: dict[str, str] = {}
        page["images"] = self._renumber(page.get("images") or [], "images",
                                        lambda n, image: _safe_image_id(n, str(image.get("id", ""))),
                                        renames)
        if isinstance(page.get("tables"), list):
            page["tables"] = self._renumber(page["tables"], "tables", _safe_table_id, renames)
        return renames


def _rename_block_refs(page: dict[str, Any], renames: dict[str, str]) -> None:
    if not isinstance(page.get("blocks"), list):
        return
    blocks = []
    for block in page["blocks"]:
        if isinstance(block, dict):
            block = dict(block)
            for key in ("image_id", "table_id"):
                if isinstance(block.get(key), str):
                    block[key] = renames.get(block[key], block[key])
        blocks.append(block)
    page["blocks"] = blocks


def merge_responses(chunks: list[tuple[Chunk, dict[str, Any]]],
                    annotation_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge (chunk, response) pairs given in page order into one OCRResponse.

    `annotation_schema`: the JSON Schema document annotations are checked against (problems are
    noted on each `document_annotations` entry, never raised)."""
    merged: dict[str, Any] = {}
    pages_out: list[dict[str, Any]] = []
    numbering = _Numbering()
    annotations: list[dict[str, Any]] = []
    pages_processed = 0
    doc_size = 0
    for chunk, response in chunks:
        for key, value in response.items():
            if key not in ("pages", "usage_info") and key not in merged:
                merged[key] = value  # model, unknown fields: first wins
        pages = sorted(
            response["pages"], key=lambda p: p.get("index", 0) if isinstance(p, dict) else 0
        )
        for offset, page in enumerate(pages):
            page = dict(page)
            page["index"] = chunk.first_page + offset
            renames = numbering.renumber(page)
            page["markdown"] = _rewrite_links(page["markdown"], renames)
            _rename_block_refs(page, renames)
            normalise_page(page)
            pages_out.append(page)
        entry = chunk_annotation(response.get("document_annotation"), chunk.first_page, len(pages))
        if entry is not None:
            annotations.append(entry)
        pages_processed += _usage_int(response, "pages_processed", len(pages))
        doc_size += _usage_int(response, "doc_size_bytes", 0)
    if annotations:
        check_against(annotations, annotation_schema)
        merged["document_annotations"] = annotations
        if len(chunks) > 1:  # one string cannot stand for several chunks: see the list
            merged["document_annotation"] = None
    merged["pages"] = pages_out
    merged["usage_info"] = {"pages_processed": pages_processed, "doc_size_bytes": doc_size}
    return merged
