"""Page confidence in one shape for every backend: the API's `confidence_scores`
(`average_page_confidence_score`, `minimum_page_confidence_score`, 0 to 1).

The hosted models send that object when `confidence_scores_granularity` is set. The local engine
gives each OCR'd page one figure, `confidence` (mean word confidence weighted by characters,
0-100 from Tesseract); `normalise_page` turns it into the same object, with the minimum equal to
the average since the engine reports no minimum. Text-layer pages are not scored (null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AVERAGE = "average_page_confidence_score"
MINIMUM = "minimum_page_confidence_score"


def _unit(value: Any) -> float | None:
    """A score as 0..1 (a 0-100 figure scaled down); None for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if value > 1.0:
        value /= 100.0
    return min(1.0, max(0.0, value))


def normalise_page(page: dict[str, Any]) -> None:
    """Give a page that carries only the local engine's `confidence` the API's object."""
    if page.get("confidence_scores") is not None or "confidence" not in page:
        return
    score = _unit(page.get("confidence"))
    page["confidence_scores"] = None if score is None else {
        AVERAGE: round(score, 4), MINIMUM: round(score, 4)}


def page_score(page: dict[str, Any]) -> float | None:
    """The page's average confidence 0..1, or None when it was not scored."""
    scores = page.get("confidence_scores")
    if not isinstance(scores, dict):
        return None
    return _unit(scores.get(AVERAGE))


@dataclass(frozen=True)
class LowPage:
    """A page scored under the threshold: for review."""

    path: str
    page: int  # 1-based, as people count
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "page": self.page, "confidence": self.confidence}


def low_pages(rel: str, pages: list[dict[str, Any]], threshold: float) -> tuple[LowPage, ...]:
    """The document's pages scored under `threshold`, lowest first."""
    found = []
    for page in pages:
        score = page_score(page)
        if score is not None and score < threshold:
            found.append(LowPage(rel, int(page.get("index", 0)) + 1, round(score, 4)))
    return tuple(sorted(found, key=lambda p: (p.confidence, p.page)))
