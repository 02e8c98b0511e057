"""What a reviewer should look at in a finished document: its pages under the confidence
threshold, and document annotations that do not match their schema. Data for the run report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config.groups import OutputSettings
from pipeline.stages.annotations import problems_text
from pipeline.stages.confidence import LowPage, low_pages


@dataclass(frozen=True)
class Review:
    low_confidence: tuple[LowPage, ...] = ()
    warnings: tuple[str, ...] = ()


def review(rel: str, merged: dict[str, Any], outputs: OutputSettings) -> Review:
    return Review(
        low_confidence=low_pages(rel, merged["pages"], outputs.confidence_threshold),
        warnings=tuple(problems_text(rel, merged.get("document_annotations") or [])),
    )


def annotation_schema(outputs: OutputSettings) -> dict[str, Any] | None:
    """The JSON Schema document annotations are checked against (loaded once), or None."""
    if outputs.document_annotation_schema is None:
        return None
    from pipeline.backends.request_options import load_schema

    return load_schema(outputs.document_annotation_schema)["schema"]
