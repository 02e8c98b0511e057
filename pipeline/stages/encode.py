"""Turn a chunk into the `document` part of an OCR request: a base64 data URL, true MIME type."""

from __future__ import annotations

import base64
from typing import Any

from pipeline.models import Chunk


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def document_field(chunk: Chunk) -> dict[str, Any]:
    """The request's `document`: document_url for PDFs, image_url for images."""
    url = data_url(chunk.media_type, chunk.data)
    if chunk.is_pdf:
        return {"type": "document_url", "document_url": url}
    return {"type": "image_url", "image_url": url}


def decode_data_url(value: str) -> tuple[str, bytes]:
    """Split `data:<type>;base64,<payload>` into (type, bytes); raise ValueError if it is not one."""
    if not value.startswith("data:") or ";base64," not in value:
        raise ValueError("not a base64 data URL")
    head, payload = value[5:].split(";base64,", 1)
    return head or "application/octet-stream", base64.b64decode(payload, validate=True)
