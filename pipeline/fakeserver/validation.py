"""Read an OCR request body the way the real service does: FastAPI-style 422s, 400s for bad data.

`parse_request` is synchronous and CPU-bound on large bodies (JSON, base64, sha256); the server
runs it in a worker thread when the body is big.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.fakeserver.documents import is_pdf, sniff_image
from pipeline.fakeserver.replies import FieldError, Rejected, bad_request, validation_failed
from pipeline.fakeserver.rich import RichRequest

DEFAULT_MODEL = "mistral-ocr-latest"
MAX_PAGES = 10_000  # bounds a "pages" range string, so "0-999999999" cannot exhaust memory

# Every key of the published OCRRequest schema (which has no "id"); anything else is 422.
REQUEST_KEYS = frozenset({
    "model", "document", "pages", "include_image_base64", "image_limit",
    "image_min_size", "bbox_annotation_format", "document_annotation_format",
    "document_annotation_prompt", "table_format", "extract_header", "extract_footer",
    "include_blocks", "confidence_scores_granularity",
})
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.S)
_PAGE_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
#: Booleans of the schema that are not nullable: `null` is a 422 there, not "the default".
NOT_NULLABLE = frozenset({"extract_header", "extract_footer", "include_blocks"})
#: The keys of a ResponseFormat's `json_schema` (the JsonSchema object).
JSON_SCHEMA_KEYS = frozenset({"name", "description", "schema", "strict"})

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class OCRCall:
    """A valid request, reduced to what the fake needs to answer it."""

    model: str
    kind: Literal["pdf", "image"]
    data: bytes
    sha256: str
    pages: list[int] | None  # sorted, unique, 0-based; None = every page
    include_image_base64: bool
    image_limit: int | None
    rich: RichRequest = RichRequest()  # tables, header/footer, confidence, blocks, annotations


def parse_request(body: bytes) -> OCRCall:
    """Validate `body`; raise `Rejected` with the answer the real service would give."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise Rejected(validation_failed([FieldError(
            ("body",), "Input should be a valid dictionary or object to extract fields from",
            "model_attributes_type",
        )]))
    errors = _check_fields(payload)
    document = payload.get("document")
    variant = _check_document(document, errors) if "document" in payload else None
    if errors:
        raise Rejected(validation_failed(errors))
    assert isinstance(document, dict) and variant is not None
    data = _decode_document(document, variant)
    kind: Literal["pdf", "image"]
    if variant == "document_url":
        if not is_pdf(data):
            raise bad_request(
                "document_url does not hold a PDF (no %PDF- header): send images as image_url"
            )
        kind = "pdf"
    else:
        if sniff_image(data) is None:
            raise bad_request("image_url does not hold a recognised image (PNG, JPEG, ...)")
        kind = "image"
    model = payload.get("model")
    return OCRCall(
        model=model if isinstance(model, str) else DEFAULT_MODEL,
        kind=kind,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        pages=_parse_pages(payload.get("pages")),
        include_image_base64=bool(payload.get("include_image_base64")),
        image_limit=payload.get("image_limit"),
        rich=RichRequest.from_payload(payload),
    )


def _check_fields(payload: dict[str, Any]) -> list[FieldError]:
    errors = [
        FieldError(("body", key), "Extra inputs are not permitted", "extra_forbidden")
        for key in payload
        if key not in REQUEST_KEYS
    ]
    errors += [
        FieldError(("body", key), "Field required", "missing")
        for key in ("model", "document")
        if key not in payload
    ]
    checks: dict[str, tuple[type | tuple[type, ...], str, str]] = {
        "model": (str, "string_type", "Input should be a valid string"),
        "include_image_base64": (bool, "bool_type", "Input should be a valid boolean"),
        "extract_header": (bool, "bool_type", "Input should be a valid boolean"),
        "extract_footer": (bool, "bool_type", "Input should be a valid boolean"),
        "include_blocks": (bool, "bool_type", "Input should be a valid boolean"),
        "image_limit": (int, "int_type", "Input should be a valid integer"),
        "image_min_size": (int, "int_type", "Input should be a valid integer"),
        "document_annotation_prompt": (str, "string_type", "Input should be a valid string"),
        "bbox_annotation_format": (dict, "model_type", "Input should be a valid object"),
        "document_annotation_format": (dict, "model_type", "Input should be a valid object"),
    }
    for key, (types, type_, msg) in checks.items():
        value = payload.get(key)
        if value is None and not (key in NOT_NULLABLE and key in payload):
            continue
        wrong_int = types is int and isinstance(value, bool)
        if not isinstance(value, types) or wrong_int:
            errors.append(FieldError(("body", key), msg, type_))
    for key, allowed in (
        ("table_format", ("markdown", "html")),
        ("confidence_scores_granularity", ("word", "page", "block")),
    ):
        value = payload.get(key)
        if value is not None and value not in allowed:
            errors.append(FieldError(
                ("body", key), "Input should be " + " or ".join(map(repr, allowed)), "enum"
            ))
    for key in ("bbox_annotation_format", "document_annotation_format"):
        fmt = payload.get(key)
        if isinstance(fmt, dict):
            if set(fmt) - {"type", "json_schema"}:
                errors.append(FieldError(("body", key), "Extra inputs are not permitted",
                                         "extra_forbidden"))
            if fmt.get("type", "text") not in ("text", "json_object", "json_schema"):
                errors.append(FieldError(("body", key, "type"),
                                         "Input should be 'text', 'json_object' or 'json_schema'",
                                         "enum"))
            errors += _check_json_schema(fmt.get("json_schema"), ("body", key, "json_schema"))
    if payload.get("document_annotation_prompt") is not None and not payload.get(
            "document_annotation_format"):
        errors.append(FieldError(("body", "document_annotation_prompt"), "Value error, a"
                                 " document_annotation_format must be provided", "value_error"))
    if "pages" in payload:
        try:
            _parse_pages(payload["pages"])
        except ValueError as exc:
            errors.append(FieldError(("body", "pages"), str(exc), "value_error"))
    return errors


def _check_json_schema(value: Any, loc: Loc) -> list[FieldError]:
    """A ResponseFormat's `json_schema`: null, or a JsonSchema object (name, schema required)."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [FieldError(loc, "Input should be a valid dictionary or object", "model_type")]
    errors = [FieldError((*loc, extra), "Extra inputs are not permitted", "extra_forbidden")
              for extra in sorted(set(value) - JSON_SCHEMA_KEYS)]
    errors += [FieldError((*loc, key), "Field required", "missing")
               for key in ("name", "schema") if key not in value]
    if "name" in value and not isinstance(value["name"], str):
        errors.append(FieldError((*loc, "name"), "Input should be a valid string", "string_type"))
    if value.get("description") is not None and not isinstance(value["description"], str):
        errors.append(FieldError((*loc, "description"), "Input should be a valid string",
                                 "string_type"))
    if "schema" in value and not isinstance(value["schema"], dict):
        errors.append(FieldError((*loc, "schema"), "Input should be a valid dictionary",
                                 "dict_type"))
    if "strict" in value and not isinstance(value["strict"], bool):
        errors.append(FieldError((*loc, "strict"), "Input should be a valid boolean",
                                 "bool_type"))
    return errors


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_document(document: Any, errors: list[FieldError]) -> str | None:
    """Which document variant this is ("document_url", "image_url", "file"), telling by key."""
    loc: Loc = ("body", "document")
    if not isinstance(document, dict):
        errors.append(FieldError(loc, "Input should be a valid object", "model_type"))
        return None
    variants = {
        "document_url": {"type", "document_url", "document_name"},
        "image_url": {"type", "image_url"},
        "file_id": {"type", "file_id"},
    }
    key = next((k for k in variants if k in document), None)
    if key is None:
        errors.append(FieldError(
            loc, "document needs one of 'document_url', 'image_url' or 'file_id'",
            "union_tag_not_found",
        ))
        return None
    before = len(errors)
    errors.extend(
        FieldError((*loc, extra), "Extra inputs are not permitted", "extra_forbidden")
        for extra in sorted(set(document) - variants[key])
    )
    expected_type = "file" if key == "file_id" else key
    if document.get("type", expected_type) != expected_type:
        errors.append(FieldError((*loc, "type"), f"Input should be '{expected_type}'",
                                 "literal_error"))
    value = document[key]
    if key == "image_url" and isinstance(value, dict):
        errors.extend(
            FieldError((*loc, key, extra), "Extra inputs are not permitted", "extra_forbidden")
            for extra in sorted(set(value) - {"url", "detail"})
        )
        if "url" not in value:
            errors.append(FieldError((*loc, key, "url"), "Field required", "missing"))
        elif not isinstance(value["url"], str):
            errors.append(FieldError((*loc, key, "url"), "Input should be a valid string",
                                     "string_type"))
        if value.get("detail") not in (None, "low", "auto", "high"):
            errors.append(FieldError((*loc, key, "detail"),
                                     "Input should be 'low', 'auto' or 'high'", "enum"))
    elif not isinstance(value, str):
        errors.append(FieldError((*loc, key), "Input should be a valid string", "string_type"))
    elif key == "file_id" and not _is_uuid(value):
        errors.append(FieldError((*loc, key), "Input should be a valid UUID", "uuid_parsing"))
    name = document.get("document_name")
    if name is not None and not isinstance(name, str):
        errors.append(FieldError((*loc, "document_name"), "Input should be a valid string",
                                 "string_type"))
    return key if len(errors) == before else None


def _decode_document(document: dict[str, Any], variant: str) -> bytes:
    if variant == "file_id":
        raise bad_request(
            "the fake server has no file storage: send the document inline as a base64 data URL"
        )
    value = document[variant]
    url: str = value["url"] if isinstance(value, dict) else value
    return decode_data_url(url)


def decode_data_url(url: str) -> bytes:
    """Bytes of a `data:<mime>;base64,...` URL; 400 for anything else."""
    if url.startswith(("http://", "https://")):
        raise bad_request(
            "the fake server cannot fetch URLs: send the document as a base64 data URL"
        )
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise bad_request("document URL is not a data URL (data:<mime>;base64,...)")
    if ";base64" not in match["params"].lower():
        raise bad_request("data URL is not base64-encoded (expected ';base64,')")
    try:
        data = base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"data URL payload is not valid base64: {exc}") from exc
    if not data:
        raise bad_request("document is empty")
    return data


def _parse_pages(value: Any) -> list[int] | None:
    """`pages` as sorted unique 0-based numbers: a list of ints or a string like "0,2-4"."""
    if value is None:
        return None
    pages: set[int] = set()
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise ValueError("pages must be non-negative integers")
            pages.add(item)
    elif isinstance(value, str):
        for part in value.split(","):
            match = _PAGE_RANGE.fullmatch(part)
            if match is None:
                raise ValueError(f"invalid page range {part!r}: use e.g. '0,2-4'")
            first = int(match[1])
            last = int(match[2]) if match[2] is not None else first
            if last < first:
                raise ValueError(f"invalid page range {part!r}: end before start")
            if last - first >= MAX_PAGES:
                raise ValueError(f"page range {part!r} is longer than {MAX_PAGES} pages")
            pages.update(range(first, last + 1))
    else:
        raise ValueError("pages must be a list of integers or a string like '0,2-4'")
    if not pages:
        raise ValueError("pages must not be empty")
    return sorted(pages)
