"""How a run ended, as data: why it stopped, its outcome, and the one function that turns them
into the exit code."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.errors import ExitCode


class StopReason(enum.StrEnum):
    SIGINT = "SIGINT"
    SIGTERM = "SIGTERM"
    BUDGET = "budget"  # --max-pages / --max-cost / --max-runtime
    PLANNING_ERROR = "planning error"

    @property
    def is_signal(self) -> bool:
        return self in (StopReason.SIGINT, StopReason.SIGTERM)


@dataclass(frozen=True)
class StopRequest:
    reason: StopReason
    detail: str = ""  # e.g. "--max-runtime 60 s"


class Outcome(enum.StrEnum):
    OK = "ok"
    SOME_FAILED = "some_failed"
    FATAL = "fatal"
    INTERRUPTED = "interrupted"
    BUDGET = "budget"


EXIT_CODES: dict[Outcome, ExitCode] = {
    Outcome.OK: ExitCode.OK,
    Outcome.SOME_FAILED: ExitCode.SOME_FAILED,
    Outcome.FATAL: ExitCode.FATAL,
    Outcome.INTERRUPTED: ExitCode.INTERRUPTED,
    Outcome.BUDGET: ExitCode.FATAL,
}


def decide_outcome(*, fatal: bool, stop: StopRequest | None, failed_now: int,
                   failed_earlier: int) -> Outcome:
    """A fatal condition wins, then a stop, then failures: this run's and those left failed by
    earlier runs (the input is not all done while any is failed)."""
    if fatal or (stop is not None and stop.reason == StopReason.PLANNING_ERROR):
        return Outcome.FATAL
    if stop is not None and stop.reason.is_signal:
        return Outcome.INTERRUPTED
    if stop is not None and stop.reason == StopReason.BUDGET:
        return Outcome.BUDGET
    if failed_now or failed_earlier:
        return Outcome.SOME_FAILED
    return Outcome.OK


def exit_code(outcome: Outcome) -> ExitCode:
    return EXIT_CODES[outcome]
