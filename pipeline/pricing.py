"""What pages cost: US$ per 1,000 pages by model, Mistral's published prices as defaults."""

from __future__ import annotations

# OCR 3 (mistral-ocr-2512) $2 per 1,000 pages; OCR 4.x (and the -latest alias) $4.
_PRICES = (
    ("2512", 2.0),
    ("ocr-3", 2.0),
    ("mistral-ocr", 4.0),
    ("mistral-document-ai", 4.0),
)


def price_per_1000_pages(backend: str, model: str, override: float | None = None) -> float:
    if override is not None:
        return override
    if backend == "local":
        return 0.0
    for marker, price in _PRICES:
        if marker in model:
            return price
    return 4.0


def cost(pages: int, price_per_1000: float) -> float:
    return round(pages * price_per_1000 / 1000.0, 6)


#: The Batch API costs 50% of the synchronous price.
BATCH_DISCOUNT = 0.5


def batch_price(price_per_1000: float) -> float:
    """The price per 1,000 pages of a request sent through a batch job."""
    return price_per_1000 * BATCH_DISCOUNT
