"""Live counters of what the fake server saw and answered (also served by `GET /_stats`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters for the OCR route.

    `by_status` keys are status codes as strings, or "reset" / "hang" for those faults.
    `ok_by_document` maps the sha256 of each decoded document to the number of valid 200 answers
    actually written for it: a count above 1 means the same bytes were paid for twice.
    An answer is counted only once it has been handed to the connection.
    """

    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    answered_ok: int = 0
    pages_answered: int = 0
    ok_by_document: dict[str, int] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_concurrent: int = 0
    bytes_received: int = 0

    def count_status(self, key: str) -> None:
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def count_fault(self, kind: str) -> None:
        self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    def count_ok(self, sha256: str, pages: int) -> None:
        self.answered_ok += 1
        self.pages_answered += pages
        self.ok_by_document[sha256] = self.ok_by_document.get(sha256, 0) + 1

    def enter(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_concurrent = max(self.max_concurrent, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def reset(self) -> None:
        """Zero every counter in place (holders keep the same object); in-flight stays true."""
        in_flight = self.in_flight
        fresh = Stats()
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        self.in_flight = in_flight
        self.max_concurrent = in_flight

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
