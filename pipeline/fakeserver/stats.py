"""Live counters of what the fake server saw and answered (also served by `GET /_stats`)."""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Counters for the OCR route.

    `by_status` keys are status codes as strings, or "reset" / "hang" for those faults.
    `ok_by_document` maps the sha256 of each decoded document to the number of valid 200 answers
    actually written for it: a count above 1 means the same bytes were paid for twice.
    An answer is counted only once it has been handed to the connection.

    `admitted` / `rate_limited` count the rate limiter's verdicts (a 429 injected as a fault is
    not in `rate_limited`). `max_admitted_1s` / `max_admitted_60s` are the most admissions seen
    in any sliding 1 s / 60 s window, exact: the window ending at each admission is counted,
    and any window's count is at most that of the window ending at its last admission.
    `stuck` counts requests held back by the stuck-request option.
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
    admitted: int = 0
    rate_limited: int = 0
    max_admitted_1s: int = 0
    max_admitted_60s: int = 0
    stuck: int = 0
    _last_1s: deque[float] = field(default_factory=deque, repr=False)
    _last_60s: deque[float] = field(default_factory=deque, repr=False)

    def count_admitted(self, at: float) -> None:
        """One admission at clock reading `at` (non-decreasing between calls)."""
        self.admitted += 1
        for times, span in ((self._last_1s, 1.0), (self._last_60s, 60.0)):
            times.append(at)
            while times[0] <= at - span:
                times.popleft()
        self.max_admitted_1s = max(self.max_admitted_1s, len(self._last_1s))
        self.max_admitted_60s = max(self.max_admitted_60s, len(self._last_60s))

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
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not f.name.startswith("_")
        }


def _plain(value: Any) -> Any:
    """A copy that JSON can serialise and later counting cannot change."""
    return dict(value) if isinstance(value, dict) else value
