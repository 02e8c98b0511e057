"""What the newer OCR models add to an answer, done the way the real service does it:
`table_format` (tables out of the markdown into `tables[]`, a `[tbl-N.html](tbl-N.html)` link in
their place), `extract_header` / `extract_footer` (first / last line of the page into `header` /
`footer`), `confidence_scores_granularity` (page, word or block scores), `include_blocks` (typed
blocks with coordinates), `document_annotation_format` / `bbox_annotation_format` (a JSON string
that follows the given JSON Schema: a small valid instance, `schema_instance`).

The fake's "recognition": a run of two or more lines holding `|` is a table; a word holding `~`
reads as smudged and scores low (0.35), other words score 0.90-0.99 (a stable hash of the word).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

SMUDGED = "~"
_LINK_LINE = re.compile(r"^!?\[[^\]]*\]\([^)]*\)$")
_WORD = re.compile(r"\S+")
_PLAIN_WORD = re.compile(r"[\w.,:;'-]+")


@dataclass(frozen=True)
class RichRequest:
    """The request's output options (validated already)."""

    table_format: str | None = None
    extract_header: bool = False
    extract_footer: bool = False
    include_blocks: bool = False
    confidence: str | None = None  # confidence_scores_granularity
    document_schema: dict[str, Any] | None = None
    bbox_schema: dict[str, Any] | None = None
    bad_annotations: bool = False  # options.bad_annotations: break the schema on purpose

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RichRequest:
        return cls(
            table_format=payload.get("table_format"),
            extract_header=bool(payload.get("extract_header")),
            extract_footer=bool(payload.get("extract_footer")),
            include_blocks=bool(payload.get("include_blocks")),
            confidence=payload.get("confidence_scores_granularity"),
            document_schema=_schema_of(payload.get("document_annotation_format")),
            bbox_schema=_schema_of(payload.get("bbox_annotation_format")),
        )

    @property
    def anything(self) -> bool:
        return any((self.table_format, self.extract_header, self.extract_footer,
                    self.include_blocks, self.confidence, self.document_schema is not None,
                    self.bbox_schema is not None))


def _schema_of(fmt: Any) -> dict[str, Any] | None:
    """The JSON Schema of a ResponseFormat; `{}` (anything) for json_object; None for text."""
    if not isinstance(fmt, dict) or fmt.get("type", "text") == "text":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else {"type": "object"}


def enrich(response: dict[str, Any], rich: RichRequest) -> None:
    """Apply the options to a plain answer (pages with markdown and images), in place."""
    if not rich.anything:
        return
    table_no = 0
    words: list[str] = []
    for page in response["pages"]:
        lines = page["markdown"].split("\n")
        if rich.extract_header:
            page["header"], lines = _take_line(lines, first=True)
        if rich.extract_footer:
            page["footer"], lines = _take_line(lines, first=False)
        lines, tables, table_no = _tables(lines, rich.table_format, table_no)
        page["markdown"] = "\n".join(lines).strip()
        if rich.table_format:
            page["tables"] = tables
        words += [w for w in page["markdown"].split() if _PLAIN_WORD.fullmatch(w)]
        if rich.confidence:
            page["confidence_scores"] = _page_scores(page["markdown"], rich.confidence == "word")
            if rich.confidence == "word":
                for table in tables:
                    table["word_confidence_scores"] = _word_scores(table["content"])
        if rich.include_blocks:
            page["blocks"] = _blocks(page, rich.confidence == "block")
        if rich.bbox_schema is not None:
            for image in page["images"]:
                image["image_annotation"] = _annotation(rich.bbox_schema, words, rich)
    if rich.document_schema is not None:
        response["document_annotation"] = _annotation(rich.document_schema, words, rich)


def _take_line(lines: list[str], first: bool) -> tuple[str | None, list[str]]:
    """Split off the first (or last) text line when the page has more than one."""
    text = [i for i, line in enumerate(lines) if line.strip() and not _LINK_LINE.match(line.strip())]
    if len(text) < 2:
        return None, lines
    i = text[0] if first else text[-1]
    return lines[i].strip(), lines[:i] + lines[i + 1:]


def _tables(lines: list[str], fmt: str | None, number: int
            ) -> tuple[list[str], list[dict[str, Any]], int]:
    """Runs of 2+ lines holding `|` become tables: inline markdown tables when `fmt` is None
    (what the service does without table_format), else moved out behind a link."""
    out: list[str] = []
    tables: list[dict[str, Any]] = []
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and "|" in lines[j]:
            j += 1
        if j - i < 2:
            out.append(lines[i])
            i += 1
            continue
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[i:j]]
        if fmt is None:
            out += ["", _markdown_table(rows), ""]
        else:
            ext = "html" if fmt == "html" else "md"
            table_id = f"tbl-{number}.{ext}"
            number += 1
            content = _html_table(rows) if fmt == "html" else _markdown_table(rows)
            tables.append({"id": table_id, "content": content, "format": fmt})
            out += ["", f"[{table_id}]({table_id})", ""]
        i = j
    return out, tables, number


def _markdown_table(rows: list[list[str]]) -> str:
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def _html_table(rows: list[list[str]]) -> str:
    def cells(row: list[str], tag: str) -> str:
        return "".join(f"<{tag}>{_escape(c)}</{tag}>" for c in row)

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows[1:])
    return f"<table><thead><tr>{cells(rows[0], 'th')}</tr></thead><tbody>{body}</tbody></table>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def word_confidence(word: str) -> float:
    if SMUDGED in word:
        return 0.35
    return round(0.90 + (zlib.crc32(word.encode("utf-8")) % 10) / 100, 2)


def _word_scores(text: str) -> list[dict[str, Any]]:
    return [{"text": m.group(0), "confidence": word_confidence(m.group(0)), "start_index": m.start()}
            for m in _WORD.finditer(text)]


def _page_scores(markdown: str, words: bool) -> dict[str, Any]:
    scores = _word_scores(markdown)
    values = [s["confidence"] for s in scores] or [0.99]
    result: dict[str, Any] = {
        "average_page_confidence_score": round(sum(values) / len(values), 4),
        "minimum_page_confidence_score": min(values),
    }
    if words:
        result["word_confidence_scores"] = scores
    return result


def _block_type(paragraph: str) -> tuple[str, dict[str, Any]]:
    link = re.fullmatch(r"(!?)\[[^\]]*\]\(([^)]*)\)", paragraph)
    if link and link.group(1):
        return "image", {"image_id": link.group(2)}
    if link and link.group(2).startswith("tbl-"):
        return "table", {"table_id": link.group(2)}
    if paragraph.startswith("|"):
        return "table", {"table_id": None}
    if paragraph.startswith("#"):
        return "title", {}
    return "text", {}


def _blocks(page: dict[str, Any], scored: bool) -> list[dict[str, Any]]:
    """Blocks in reading order, stacked down the page inside its dimensions."""
    dims = page.get("dimensions") or {}
    width, height = dims.get("width") or 1000, dims.get("height") or 1400
    entries: list[tuple[str, str, dict[str, Any]]] = []
    if page.get("header"):
        entries.append(("header", page["header"], {}))
    for paragraph in re.split(r"\n\s*\n", page["markdown"]):
        if paragraph.strip():
            kind, extra = _block_type(paragraph.strip())
            entries.append((kind, paragraph.strip(), extra))
    if page.get("footer"):
        entries.append(("footer", page["footer"], {}))
    step = max(1, (height - 20) // max(1, len(entries)))
    blocks = []
    for n, (kind, content, extra) in enumerate(entries):
        top = 10 + n * step
        block: dict[str, Any] = {
            "type": kind, "content": content,
            "top_left_x": min(50, width // 10), "top_left_y": top,
            "bottom_right_x": max(width - 50, width * 9 // 10), "bottom_right_y": top + step - 4,
            **extra,
        }
        if scored:
            values = [word_confidence(w) for w in content.split()]
            block["confidence_scores"] = {
                "average_content_confidence_score": round(sum(values) / len(values), 4)
                if values else None,
                "minimum_content_confidence_score": min(values) if values else None,
                "block_type_confidence_score": 0.95,
            }
        blocks.append(block)
    return blocks


def _annotation(schema: dict[str, Any], words: list[str], rich: RichRequest) -> str:
    if rich.bad_annotations:  # a value of the wrong type at the top: breaks any typed schema
        return json.dumps(["not", "what", "the", "schema", "asked", "for"])
    return json.dumps(schema_instance(schema, words))


def schema_instance(schema: Any, words: list[str] | None = None, root: Any = None,
                    depth: int = 0) -> Any:
    """A small instance valid against `schema` (JSON Schema): every property filled, strings
    from the document's words. `pattern` is not honoured (documented in docs/outputs.md)."""
    root = schema if root is None else root
    words = words or ["fake", "text"]
    if not isinstance(schema, dict) or depth > 12:
        return None
    if "$ref" in schema:
        return schema_instance(_resolve(root, schema["$ref"]), words, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((options or schema[key])[0], words, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
            for k, v in (part or {}).items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
        return schema_instance({**{k: v for k, v in schema.items() if k != "allOf"}, **merged},
                               words, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        value = {name: schema_instance(sub, words, root, depth + 1) for name, sub in props.items()}
        for name in schema.get("required") or []:
            value.setdefault(name, "")
        return value
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if schema.get("maxItems") == 0:
            return []
        return [schema_instance(schema.get("items") or {}, words, root, depth + 1)
                for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, words)


def _resolve(root: Any, ref: str) -> Any:
    node = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else []:
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    value: float = 0 if low is None else low + (1 if "exclusiveMinimum" in schema else 0)
    high = schema.get("maximum")
    if high is not None and value > high:
        value = high
    return int(value) if integer else float(value)


_FORMATS = {"date": "2024-01-31", "date-time": "2024-01-31T12:00:00Z", "email": "fake@example.com",
            "uri": "https://example.com/", "time": "12:00:00", "uuid": "00000000-0000-4000-8000-000000000000"}


def _string(schema: dict[str, Any], words: list[str]) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    text = " ".join(w for w in words[:6] if SMUDGED not in w) or "text"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[:int(high)] if high is not None else text
