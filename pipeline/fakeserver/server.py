"""Start and stop a fake server in the current event loop."""

from __future__ import annotations

import ssl
from types import TracebackType

from aiohttp import web

from pipeline.fakeserver.app import ServerState, make_app
from pipeline.fakeserver.options import FakeServerOptions
from pipeline.fakeserver.oslimits import raise_open_files_limit
from pipeline.fakeserver.stats import Stats

#: Seconds `stop()` waits for requests still in flight before cancelling them.
SHUTDOWN_TIMEOUT = 1.0
#: Pending connections the kernel queues before accept (capped by net.core.somaxconn): a
#: client opening a thousand connections at once must not see SYNs dropped.
LISTEN_BACKLOG = 4096


class FakeServer:
    """A running fake server. `stats` is live; `stop()` releases hanging requests and closes."""

    def __init__(self, url: str, state: ServerState, runner: web.AppRunner) -> None:
        self.url = url
        self._state = state
        self._runner = runner

    @property
    def options(self) -> FakeServerOptions:
        return self._state.options

    @property
    def stats(self) -> Stats:
        return self._state.stats

    def reset(self) -> None:
        """Same as `POST /_reset`: zero counters, refill the rate limit, restart fail_auth_after."""
        self._state.reset()

    async def stop(self) -> None:
        """Release hanging requests, then close; a second call does nothing."""
        if self._state.stopping.is_set():
            return
        self._state.stopping.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> FakeServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_fake_server(
    options: FakeServerOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> FakeServer:
    """Serve on host:port (port 0 picks a free one) until `stop()`; HTTPS with `ssl_context`."""
    raise_open_files_limit()
    state = ServerState(options or FakeServerOptions())
    runner = web.AppRunner(
        make_app(state),
        access_log=None,
        # A client that gives up (e.g. on a hang) cancels its handler: no leaked waits.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=LISTEN_BACKLOG)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if ssl_context else "http"
    return FakeServer(f"{scheme}://{url_host}:{bound_port}", state, runner)
