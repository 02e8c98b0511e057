"""A library's exception as text fit for a stored failure message: the same on every run.

Failure messages are stored in the manifest and the run report, and compared between runs. Some
libraries name an in-memory file by its repr, with a memory address that changes on every run:
qpdf says `stream <_io.BytesIO object at 0x7f...>: root of pages tree has no /Kids array`,
Pillow `cannot identify image file <_io.BytesIO object at 0x7f...>`. The message already names
the document, so the object is dropped and qpdf's location (`object 2 0`, `offset 679`) kept.
"""

from __future__ import annotations

import re

# `<_io.BytesIO object at 0x7f...>`, `<PIL.PngImagePlugin.PngImageFile ... at 0x7F...>`
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
# What is left of qpdf's description of an in-memory file: `stream: ...`, `stream (offset 9): ...`
_QPDF_STREAM = re.compile(r"^stream(?: \(([^()]*)\))?: ")


def stable_text(text: str) -> str:
    """`text` without object reprs (memory addresses) or qpdf's in-memory stream prefix."""
    text = _OBJECT_REPR.sub("", text)
    return _QPDF_STREAM.sub(lambda m: f"{m.group(1)}: " if m.group(1) else "", text).strip()


def exception_text(exc: BaseException) -> str:
    """The exception's message, stable from run to run; its class name when it says nothing."""
    return stable_text(str(exc)) or type(exc).__name__
