"""Request lines streamed to JSONL files on disk, one file per batch job, never all in memory.

A file takes lines until the next one would pass `max_bytes` or `max_requests`; then a new
file starts. Files live in `<out>/.ocr-pipeline/batch/` and are named by our own part id
(never by anything a server said). `seal()` flushes and fsyncs a file before it is uploaded.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Part:
    part_id: str
    path: Path
    requests: int = 0
    bytes: int = 0
    reserved: int = 0  # lines placed here whose write is still to come
    handle: IO[bytes] | None = field(default=None, repr=False)


class PartWriter:
    def __init__(self, folder: Path, max_requests: int, max_bytes: int) -> None:
        self.folder = folder
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.parts: list[Part] = []  # this run's unsealed parts

    def place(self, size: int) -> tuple[Part, bool]:
        """The part a line of `size` bytes goes to, and whether it is a new one."""
        current = self.parts[-1] if self.parts else None
        if (current is None or current.reserved + 1 > self.max_requests
                or (current.reserved and current.bytes + size > self.max_bytes)):
            self.folder.mkdir(parents=True, exist_ok=True)
            part_id = secrets.token_hex(8)
            current = Part(part_id, self.folder / f"{part_id}.jsonl")
            self.parts.append(current)
            new = True
        else:
            new = False
        current.reserved += 1
        current.bytes += size
        return current, new

    def unplace(self, part: Part, size: int) -> None:
        """A placed line that is not written after all (its chunk needs no request)."""
        part.reserved -= 1
        part.bytes -= size

    def write(self, part: Part, line: bytes) -> None:
        if part.handle is None:
            part.handle = part.path.open("ab")
        part.handle.write(line if line.endswith(b"\n") else line + b"\n")
        part.requests += 1

    def seal_all(self) -> list[Part]:
        """Flush and sync every part of this run; returns those holding lines."""
        sealed = []
        for part in self.parts:
            if part.handle is not None:
                part.handle.flush()
                os.fsync(part.handle.fileno())
                part.handle.close()
                part.handle = None
            sealed.append(part)
        self.parts = []
        return sealed
