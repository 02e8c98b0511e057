"""Progress during a run: a live bar on a terminal, periodic JSON events otherwise.

On a terminal the bar is the last line of the screen. It is drawn to fit the terminal's width as
it is at each redraw (a resized window gets a bar of its new width), and every other line written
to the same stream (log lines) goes through `BarTerminal`, which clears the bar, writes the line
and draws the bar again below it: log lines scroll above the bar instead of being glued onto it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TextIO

from pipeline.transport.ratelimit import LimiterSnapshot

CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line
DEFAULT_WIDTH = 80
MIN_BAR_CELLS = 10


@dataclass
class ProgressSnapshot:
    documents_total: int
    documents_done: int
    documents_failed: int
    pages_done: int
    retries: int
    throttled: int
    elapsed_s: float
    workers: int | None = None  # local engine on a cluster: Dask workers connected now
    limiter: LimiterSnapshot | None = None  # a hosted endpoint's rate limiter, as it is now

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
        data.pop("limiter")
        if self.limiter is not None:  # pace, source of the limit, in flight vs Little's law
            data.update(limiter_fields(self.limiter))
        data["pages_per_s"] = round(self.pages_per_s, 2)
        data["pages_per_min"] = round(self.pages_per_s * 60, 1)
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 1)
        return data


def resolve_mode(mode: str) -> str:
    """`auto`: a bar on a terminal (stderr), JSON events otherwise."""
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "json"
    return mode


def limiter_fields(lim: LimiterSnapshot) -> dict[str, Any]:
    """The limiter's state as flat fields of a progress event."""
    return {"rate_rps": round(lim.rate, 2), "rate_limit_source": lim.limit_source,
            "requests_in_flight": lim.in_flight, "target_in_flight": lim.target_in_flight,
            "requests_waiting": lim.waiting,
            "latency_s": None if lim.latency is None else round(lim.latency, 3),
            "rejections_429": lim.rejections, "global_pauses": lim.pauses}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02}:{s % 60:02}"


def _bar_fields(snap: ProgressSnapshot) -> list[str]:
    """What the bar line says, most important first: the narrower the terminal, the fewer of
    these fit (dropped from the end). Counters that are zero are not shown at all."""
    fields = [f"{snap.finished}/{snap.documents_total} docs"]
    if snap.documents_failed:
        fields.append(f"failed {snap.documents_failed}")
    speed = (f"{snap.pages_per_s * 60:.0f} pages/min" if snap.workers is not None
             else f"{snap.pages_per_s:.1f} pages/s")
    fields += [f"ETA {_clock(snap.eta_s)}", speed, f"{snap.pages_done} pages"]
    if snap.workers is not None:
        fields.append(f"{snap.workers} workers")
    if snap.limiter is not None and snap.limiter.rate > 0:
        fields.append(f"{snap.limiter.rate:.1f} req/s ({snap.limiter.limit_source})")
    if snap.retries:
        fields.append(f"retries {snap.retries}")
    if snap.throttled:
        fields.append(f"429s {snap.throttled}")
    return fields


def render_bar(snap: ProgressSnapshot, width: int = DEFAULT_WIDTH) -> str:
    """One line of at most `width` characters: `[####....] 12/120 docs  ETA ...`."""
    fields = _bar_fields(snap)
    while fields:
        text = "  ".join(fields)
        cells = width - len(text) - 3  # "[" + bar + "] "
        if cells >= MIN_BAR_CELLS:
            total = max(snap.documents_total, 1)
            filled = min(cells, cells * snap.finished // total)
            return f"[{'#' * filled}{'.' * (cells - filled)}] {text}"
        if len(fields) == 1:
            return text[:width]  # too narrow for a bar: the count alone
        fields.pop()
    return ""


def terminal_width(stream: TextIO) -> int:
    """The stream's terminal width now (read at each redraw, so a resize is followed)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or DEFAULT_WIDTH
    except (OSError, ValueError, AttributeError):
        return DEFAULT_WIDTH


class BarTerminal:
    """A text stream (stderr on a terminal) whose last line is a status bar.

    Whatever is written through it (log lines, from any thread) is printed above the bar: the bar
    is cleared first and drawn again once the line is complete. Other attributes are the wrapped
    stream's, so it can stand in for `sys.stderr`.
    """

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream
        self._lock = threading.RLock()
        self._render: Callable[[int], str] | None = None
        self._drawn = False
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            if self._drawn:
                self.wrapped.write(CLEAR_LINE)
                self._drawn = False
            self.wrapped.write(text)
            self._at_line_start = text.endswith("\n")
            if self._at_line_start and self._render is not None:
                self._draw()
            else:
                self.wrapped.flush()
        return len(text)

    def flush(self) -> None:
        self.wrapped.flush()

    def isatty(self) -> bool:
        return self.wrapped.isatty()

    def fileno(self) -> int:
        return self.wrapped.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def set_bar(self, render: Callable[[int], str]) -> None:
        """Show (or refresh) the bar; `render(width)` returns a line of at most `width` chars."""
        with self._lock:
            self._render = render
            if self._at_line_start:
                self._draw()

    def clear_bar(self) -> None:
        """Remove the bar for good (before the summary): later lines are written plainly."""
        with self._lock:
            self._render = None
            if self._drawn:
                self.wrapped.write(CLEAR_LINE)
                self.wrapped.flush()
                self._drawn = False

    def _draw(self) -> None:
        assert self._render is not None
        # One column short of the width: a line filling the last column makes some terminals
        # wrap, and every redraw would then leave a line behind.
        line = self._render(max(terminal_width(self.wrapped) - 1, 1))
        self.wrapped.write(CLEAR_LINE + line)
        self.wrapped.flush()
        self._drawn = True


class ProgressDisplay:
    """Renders snapshots: `bar` redraws one terminal line, `json` logs an event, `off` nothing."""

    def __init__(self, mode: str, stream: TextIO, log: Any) -> None:
        self.mode = mode
        self.stream = stream
        self.log = log
        self.terminal: BarTerminal | None = None
        if mode == "bar":
            self.terminal = stream if isinstance(stream, BarTerminal) else BarTerminal(stream)
        self._last = 0.0

    def show(self, snap: ProgressSnapshot) -> None:
        if self.terminal is not None:
            self.terminal.set_bar(partial(render_bar, snap))
        elif self.mode == "json":
            self.log.info("progress", **snap.as_event())
        self._last = time.monotonic()

    def clear(self) -> None:
        """Leave the terminal on a fresh line (before the summary)."""
        if self.terminal is not None:
            self.terminal.clear_bar()
