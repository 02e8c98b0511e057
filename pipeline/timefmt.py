"""Times as people and reports read them: ISO 8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
