"""Document annotations: the service returns each request's `document_annotation` as a JSON
*string*. Each chunk's is parsed and kept with the pages it covers (a split document has one per
chunk: the service annotates what it was sent), then checked against the user's schema. A
mismatch is reported, never fatal: the pages are paid for and their text is good."""

from __future__ import annotations

import json
from typing import Any


def chunk_annotation(raw: Any, first_page: int, page_count: int) -> dict[str, Any] | None:
    """`{"pages": [first, last] (1-based), "annotation": <parsed>}`; None when the service sent
    none. Text that is not JSON is kept as `raw` with a problem."""
    if raw is None:
        return None
    entry: dict[str, Any] = {"pages": [first_page + 1, first_page + page_count]}
    if not isinstance(raw, str):
        entry.update(annotation=None, raw=raw, problems=["not a JSON string"])
        return entry
    try:
        entry["annotation"] = json.loads(raw)
    except ValueError as exc:
        entry.update(annotation=None, raw=raw, problems=[f"not valid JSON: {exc}"])
    return entry


def check_against(entries: list[dict[str, Any]], schema: dict[str, Any] | None) -> None:
    """Add `problems` (a few readable lines) to each entry whose annotation breaks `schema`."""
    if schema is None:
        return
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    for entry in entries:
        if entry.get("problems"):
            continue
        errors = sorted(validator.iter_errors(entry["annotation"]), key=lambda e: list(e.path))
        if errors:
            entry["problems"] = [
                f"{'/'.join(str(p) for p in e.path) or '(top level)'}: {e.message}"[:300]
                for e in errors[:5]
            ]


def problems_text(rel: str, entries: list[dict[str, Any]]) -> list[str]:
    """One line per annotation with problems, for the run report's warnings."""
    return [f"{rel}: document annotation of pages {e['pages'][0]}-{e['pages'][1]} does not match"
            f" the schema: {'; '.join(e['problems'])}" for e in entries if e.get("problems")]
