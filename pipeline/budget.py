"""Page and cost budgets: pages are reserved before a request is sent, so a budget is never
exceeded, not even by the requests in flight."""

from __future__ import annotations

import math


class Budget:
    def __init__(self, max_pages: int | None, max_cost: float | None, price_per_1000: float) -> None:
        limits = []
        if max_pages is not None:
            limits.append(max_pages)
        if max_cost is not None and price_per_1000 > 0:
            limits.append(math.floor(max_cost * 1000 / price_per_1000 + 1e-9))
        self.page_limit: int | None = min(limits) if limits else None
        self.spent = 0
        self.reserved = 0
        self.reached = False

    def reserve(self, pages: int) -> bool:
        """Hold `pages` for a request about to be sent; False (and `reached`) when over budget."""
        if self.page_limit is not None and self.spent + self.reserved + pages > self.page_limit:
            self.reached = True
            return False
        self.reserved += pages
        return True

    def settle(self, pages: int, *, paid: bool) -> None:
        """The request ended: its pages are spent (paid) or handed back."""
        self.reserved -= pages
        if paid:
            self.spent += pages
