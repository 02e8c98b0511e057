"""JSON where a run spends its time: a document's output file, checkpoints, the service's answers.

`json.dumps(..., indent=2)` runs the standard library's pure-Python encoder (its C encoder does
no indentation): 17% of the run's own time at R = 200 with 50-page documents (docs/performance.md).
orjson writes the same JSON in C (orjson >= 3.13, the version measured): the same text, but
that a float below 1e-4 may be spelled otherwise (1e-7 for 1e-07, 0.000015 for 1.5e-05; the same
value), and that NaN and infinities, which are not JSON, are written as null where the standard
library wrote `NaN` (a file strict readers refuse). What orjson refuses (integers beyond 64 bits,
keys that are not strings, text that is not valid UTF-8) goes through the standard library as
before, so nothing a run wrote before fails now.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def pretty(value: Any) -> bytes:
    """UTF-8, indented by two: `json.dumps(value, ensure_ascii=False, indent=2)`, in C."""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8")


def compact(value: Any) -> str:
    """One line, non-ASCII kept: what `json.dumps(value, ensure_ascii=False)` writes, but for the
    spaces after separators."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return json.dumps(value, ensure_ascii=False)


def request_body(value: Any) -> bytes:
    """A request's JSON body, UTF-8 (RFC 8259), one line: a 50-page chunk's base64 is escaped in
    C at ~20x the standard library's speed."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode("ascii")


def parse(data: bytes | str) -> Any:
    """`json.loads`, in C; text orjson refuses (NaN, bytes that are not UTF-8) is read as before
    (bytes decoded with replacement). Raises ValueError when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        return json.loads(text)
