"""Deterministic crash points for crash tests: `OCR_PIPELINE_CRASH_AT=event:N` SIGKILLs the
process at the Nth occurrence of `event` (events: request, chunk_persisted, before_store,
mid_store, after_store, document_done). Unset, it costs one dict lookup per event."""

from __future__ import annotations

import os
import signal

_target: tuple[str, int] | None = None
_counts: dict[str, int] = {}


def _load() -> None:
    global _target
    spec = os.environ.get("OCR_PIPELINE_CRASH_AT", "")
    if ":" in spec:
        name, _, n = spec.partition(":")
        if n.isdigit():
            _target = (name, int(n))


_load()


def reached(event: str) -> None:
    if _target is None or _target[0] != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] >= _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
