"""pipeline/jsonio.py: orjson's text is the standard library's, and what orjson refuses still works."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline import jsonio

DOCUMENT: dict[str, Any] = {
    "pages": [{"index": 0, "markdown": "# Título\n\nLigne « deux » \u2028 fin", "images": [],
               "dimensions": {"dpi": 200, "height": 2200, "width": 1700}, "confidence": 0.973,
               "tables": [{}], "empty": None, "ok": True}],
    "model": "mistral-ocr-latest",
    "usage_info": {"pages_processed": 1, "doc_size_bytes": 123456},
    "floats": [0.1, 1e22, -0.0, 3.0, 123456789.123],
}


def test_pretty_writes_what_json_dumps_with_indent_writes() -> None:
    assert jsonio.pretty(DOCUMENT) == json.dumps(DOCUMENT, ensure_ascii=False, indent=2).encode()


def test_small_floats_may_be_spelled_otherwise_but_read_back_the_same() -> None:
    value = {"x": [1e-07, 1.5e-05, 2.5e-300]}
    assert json.loads(jsonio.pretty(value)) == value
    assert json.loads(jsonio.compact(value)) == value


@pytest.mark.parametrize("value", [{"n": 2**70}, {1: "integer key"}], ids=["big-int", "int-key"])
def test_what_orjson_refuses_is_written_by_the_standard_library(value: dict[Any, Any]) -> None:
    assert jsonio.pretty(value) == json.dumps(value, ensure_ascii=False, indent=2).encode()
    assert jsonio.compact(value) == json.dumps(value, ensure_ascii=False)


def test_nan_and_infinities_are_written_as_null_not_as_invalid_json() -> None:
    value = {"confidence": float("nan"), "limits": [float("inf"), -float("inf")]}
    assert json.loads(jsonio.pretty(value)) == {"confidence": None, "limits": [None, None]}
    assert json.loads(jsonio.compact(value)) == {"confidence": None, "limits": [None, None]}


def test_compact_reads_back_the_same_value() -> None:
    text = jsonio.compact(DOCUMENT)
    assert "\n" not in text and "Título" in text
    assert json.loads(text) == DOCUMENT


def test_parse_reads_what_json_loads_reads() -> None:
    body = json.dumps(DOCUMENT).encode()
    assert jsonio.parse(body) == DOCUMENT
    assert jsonio.parse(body.decode()) == DOCUMENT
    assert jsonio.parse(b'{"a": NaN}')["a"] != jsonio.parse(b'{"a": NaN}')["a"]  # NaN, as json reads it
    assert jsonio.parse(b'{"a": "caf\xe9"}') == {"a": "caf\ufffd"}  # not UTF-8: replaced, as before


@pytest.mark.parametrize("body", [b"", b"<html>busy</html>", b'{"pages": ['])
def test_parse_raises_value_error_on_what_is_not_json(body: bytes) -> None:
    with pytest.raises(ValueError):
        jsonio.parse(body)


def test_a_request_body_is_one_line_of_utf8_json() -> None:
    body = {"model": "mistral-ocr-latest", "document": {"type": "document_url",
            "document_url": "data:application/pdf;base64,JVBERi0xLjQK"}, "pages": [0, 1],
            "document_annotation_format": {"name": "Facture n°"}}
    out = jsonio.request_body(body)
    assert b"\n" not in out and "n°".encode() in out
    assert json.loads(out) == body
    assert json.loads(jsonio.request_body({"n": 2**70})) == {"n": 2**70}
