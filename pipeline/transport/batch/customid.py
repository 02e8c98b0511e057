"""A request line's `custom_id`: it names its chunk by itself, so a downloaded line maps to its
chunk without trusting anything else (not the line's position, not the job it came from).

`<output id>.<document sha256>.<first page>.<page count>`: the output folder's stable id (a
line of another output is refused), the document's content hash (the same content in two paths
is one request: content dedup) and the chunk's page range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^([0-9a-f]{16})\.([0-9a-f]{64})\.(\d{1,7})\.(\d{1,7})$")


@dataclass(frozen=True)
class ChunkKey:
    doc_sha256: str
    first_page: int
    page_count: int


def make_custom_id(output_id: str, key: ChunkKey) -> str:
    return f"{output_id}.{key.doc_sha256}.{key.first_page}.{key.page_count}"


def parse_custom_id(output_id: str, custom_id: object) -> ChunkKey | None:
    """The chunk a line answers, or None for a line that is not one of this output's."""
    if not isinstance(custom_id, str):
        return None
    m = _PATTERN.match(custom_id)
    if not m or m.group(1) != output_id:
        return None
    return ChunkKey(m.group(2), int(m.group(3)), int(m.group(4)))
