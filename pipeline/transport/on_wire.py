"""How a backend tells the rate limiter that a request's bytes are leaving now.

The limiter logs a send when its pacer lets the request go. On a busy event loop the bytes
leave a turn or two later: the caller's task resumes, a connection is taken, aiohttp writes the
body from a task of its own. That delay varies (0.2-60 ms at R = 200), and a strict
sliding-window server counts arrivals: two sends 200 apart whose delays differ by more than
the jitter margin reach it inside one second. So the limiter keeps the later time.

The retry loop says whom to tell for the request it is making (`telling`); the HTTP backend
looks it up (`listener`) and tells it as it writes the body. A context variable, because the
backend interface (`ocr(chunk)`) knows nothing of the limiter's tickets, and most backends (the
local engine) have nothing to tell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[], None]

_listener: ContextVar[Listener | None] = ContextVar("on_wire_listener", default=None)


@contextmanager
def telling(listener: Listener) -> Iterator[None]:
    """Within the block, the request this task makes tells `listener` when it leaves."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def listener() -> Listener | None:
    """Whom the request being made now should tell, if anyone."""
    return _listener.get()
