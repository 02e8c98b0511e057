"""The Files API of the fake server: `POST/GET /v1/files`, `GET/DELETE /v1/files/{id}`,
`GET /v1/files/{id}/content`, as in Mistral's published schema (CreateFileResponse, FileSchema,
ListFilesResponse, DeleteFileResponse). Files are kept in memory."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PURPOSES = ("fine-tune", "batch", "ocr")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    sample_type: str  # batch_request | batch_result | batch_error | ...
    source: str  # upload | mistral
    created_at: int = field(default_factory=lambda: int(time.time()))
    deleted: bool = False
    gone: bool = False  # content expired: 404 on download (results no longer downloadable)

    def schema(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.data),
            "created_at": self.created_at, "filename": self.filename, "purpose": self.purpose,
            "sample_type": self.sample_type, "source": self.source,
            "num_lines": self.data.count(b"\n") + (0 if self.data.endswith(b"\n") or not self.data
                                                   else 1),
            "mimetype": "application/jsonl", "signature": None, "expires_at": None,
            "visibility": "workspace",
        }


@dataclass
class FileStore:
    files: dict[str, StoredFile] = field(default_factory=dict)
    uploads: int = 0

    def add(self, filename: str, purpose: str, data: bytes, sample_type: str, source: str
            ) -> StoredFile:
        stored = StoredFile(str(uuid.uuid4()), filename, purpose, data, sample_type, source)
        self.files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        stored = self.files.get(file_id)
        return None if stored is None or stored.deleted else stored


def not_found(what: str) -> web.Response:
    return web.json_response({"object": "error", "message": f"{what} not found",
                              "type": "not_found", "code": "404"}, status=404)


def invalid(message: str, status: int = 422) -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": "invalid_request",
                              "code": str(status)}, status=status)


async def upload(request: web.Request, store: FileStore) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        return invalid("expected multipart/form-data with a `file` field")
    reader = await request.multipart()
    fields: dict[str, str] = {}
    data: bytes | None = None
    filename = "upload.jsonl"
    while (part := await reader.next()) is not None:
        if part.name == "file":
            filename = getattr(part, "filename", None) or filename
            data = await part.read()  # type: ignore[union-attr]
        elif part.name:
            fields[part.name] = (await part.read()).decode("utf-8")  # type: ignore[union-attr]
    if data is None:
        return invalid("Field required: file")
    purpose = fields.get("purpose", "fine-tune")
    if purpose not in PURPOSES:
        return invalid(f"purpose must be one of {', '.join(PURPOSES)}")
    store.uploads += 1
    sample = "batch_request" if purpose == "batch" else "pretrain"
    return web.json_response(store.add(filename, purpose, data, sample, "upload").schema())


async def retrieve(request: web.Request, store: FileStore) -> web.Response:
    stored = store.get(request.match_info["file_id"])
    if stored is None:
        return not_found("file")
    return web.json_response({**stored.schema(), "deleted": False})


async def delete(request: web.Request, store: FileStore) -> web.Response:
    stored = store.get(request.match_info["file_id"])
    if stored is None:
        return not_found("file")
    stored.deleted = True
    return web.json_response({"id": stored.id, "object": "file", "deleted": True})


async def content(request: web.Request, store: FileStore) -> web.StreamResponse:
    stored = store.get(request.match_info["file_id"])
    if stored is None or stored.gone:
        return not_found("file")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(stored.data)
    await response.prepare(request)
    step = 1 << 16
    for start in range(0, len(stored.data), step):
        await response.write(stored.data[start:start + step])
    await response.write_eof()
    return response


async def listing(request: web.Request, store: FileStore) -> web.Response:
    q = request.query
    purpose = q.get("purpose")
    page, size = int(q.get("page", 0)), int(q.get("page_size", 100))
    chosen = [f for f in store.files.values() if not f.deleted
              and (purpose is None or f.purpose == purpose)]
    chosen.sort(key=lambda f: f.created_at, reverse=True)
    return web.json_response({"data": [f.schema() for f in chosen[page * size:(page + 1) * size]],
                              "object": "list", "total": len(chosen)})
