"""Progress during a run: a live bar on a terminal, periodic JSON events otherwise."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO


@dataclass
class ProgressSnapshot:
    documents_total: int
    documents_done: int
    documents_failed: int
    pages_done: int
    retries: int
    throttled: int
    elapsed_s: float

    @property
    def finished(self) -> int:
        return self.documents_done + self.documents_failed

    @property
    def pages_per_s(self) -> float:
        return self.pages_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.finished == 0 or self.elapsed_s <= 0:
            return None
        remaining = max(self.documents_total - self.finished, 0)
        return remaining * self.elapsed_s / self.finished

    def as_event(self) -> dict[str, Any]:
        data = asdict(self)
        data["pages_per_s"] = round(self.pages_per_s, 2)
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 1)
        return data


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02}:{s % 60:02}"


def render_bar(snap: ProgressSnapshot, width: int = 24) -> str:
    total = max(snap.documents_total, 1)
    filled = min(width, int(width * snap.finished / total))
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {snap.finished}/{snap.documents_total} docs  {snap.pages_done} pages"
        f"  {snap.pages_per_s:.1f} pages/s  ETA {_clock(snap.eta_s)}"
        f"  retries {snap.retries}  429s {snap.throttled}  failed {snap.documents_failed}"
    )


class ProgressDisplay:
    """Renders snapshots: `bar` redraws one terminal line, `json` logs an event, `off` nothing."""

    def __init__(self, mode: str, stream: TextIO, log: Any) -> None:
        self.mode = mode
        self.stream = stream
        self.log = log
        self._drawn = False
        self._last = 0.0

    def show(self, snap: ProgressSnapshot) -> None:
        if self.mode == "bar":
            self.stream.write("\r\x1b[K" + render_bar(snap))
            self.stream.flush()
            self._drawn = True
        elif self.mode == "json":
            self.log.info("progress", **snap.as_event())
        self._last = time.monotonic()

    def clear(self) -> None:
        """Leave the terminal on a fresh line (before the summary or a log line)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
