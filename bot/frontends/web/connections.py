"""Holding up on an open network: connections that never finish a request are closed, the number
open at once stays below the process's open-file limit and below uvicorn's `limit_concurrency` (the
oldest idle one makes way for a new one), and running out of file descriptors anyway is logged once
a minute, not once per attempt.

uvicorn holds a connection that sends nothing, or half a request line, for good (its keep-alive
timeout only starts after a response), and counts `limit_concurrency` only when a request arrives:
it answers 503 to every request, /healthz included, while `limit_concurrency` connections are open,
idle or not. At the file limit asyncio's accept loop logs a traceback each time it retries. So the
HTTP protocol here is uvicorn's h11 one with a header timeout and a cap, and a log filter folds
those lines.
"""

from __future__ import annotations

import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds a connection may take to send a whole request head
FD_RESERVE = 128  # file descriptors kept for the rest of the process: the database, models, logs, threads
ACCEPT_BATCH = 128  # connections accepted per turn of the event loop (uvicorn's backlog), so the cap can act between turns
OUT_OF_FILES = "socket.accept() out of system resource"  # what asyncio logs when accept() fails with EMFILE


def connection_cap(configured: int, limit_concurrency: int | None = None, listeners: int = 1) -> int:
    """At most `configured` connections, few enough that they cannot use up the file limit, and
    enough fewer than `limit_concurrency` (None: no limit) that uvicorn never counts that many and
    answers 503, whatever connections a client holds open; `listeners`: the listening sockets."""
    cap = configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        cap = max(16, min(cap, soft - FD_RESERVE))
    if limit_concurrency:
        # A connection closed to make way leaves uvicorn's count only at connection_lost, on the
        # event loop's next turn, and a turn brings in up to ACCEPT_BATCH new connections per
        # listening socket: under a flood the count stands ACCEPT_BATCH per listener above the cap
        # for a turn (measured: cap + 128 with one listener, cap + 256 with two). One more batch
        # is kept spare (768 of the default 1,024 with one listener); a small limit gets half.
        headroom = min(ACCEPT_BATCH * (max(1, listeners) + 1), limit_concurrency // 2)
        cap = min(cap, max(1, limit_concurrency - headroom))
    return cap


class Connections:
    """The open connections that are between requests (or have not sent one yet), oldest first."""

    def __init__(self, cap: int, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.idle: dict[H11Protocol, None] = {}  # insertion-ordered: the first is the oldest

    def protocol(self) -> type[H11Protocol]:
        """uvicorn's h11 protocol with this cap and the header timeout (for uvicorn.Config(http=...))."""
        connections = self

        class GuardedH11(H11Protocol):
            def connection_made(self, transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                self.head_timer = self.loop.call_later(connections.header_timeout, self.close_if_no_request)
                connections.opened(self)

            def handle_events(self) -> None:
                super().handle_events()
                if self.cycle is not None and not self.cycle.response_complete:
                    connections.idle.pop(self, None)

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if not self.transport.is_closing():
                    connections.idle[self] = None
                    self.head_timer.cancel()
                    self.head_timer = self.loop.call_later(connections.timeout_after_response(self),
                                                           self.close_if_no_request)

            def close_if_no_request(self) -> None:
                if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                    self.transport.close()

            def connection_lost(self, exc) -> None:
                self.head_timer.cancel()
                connections.idle.pop(self, None)
                super().connection_lost(exc)

        return GuardedH11

    def timeout_after_response(self, protocol: H11Protocol) -> float:
        # uvicorn's keep-alive timer closes a quiet connection; this one closes one that started
        # the next request head and stopped.
        return protocol.timeout_keep_alive + self.header_timeout

    def opened(self, protocol: H11Protocol) -> None:
        """A new connection: over the cap, the oldest idle one (else this one) is closed."""
        self.idle[protocol] = None
        if len(protocol.connections) <= self.cap:
            return
        oldest = next((p for p in self.idle if p is not protocol and not p.transport.is_closing()), protocol)
        self.idle.pop(oldest, None)
        oldest.transport.close()


class OncePerMinute(logging.Filter):
    """asyncio logs a traceback each time accept() fails for want of file descriptors (it retries
    every second, per listening socket): let one short line through a minute."""

    def __init__(self, seconds: float = 60.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.last = -seconds

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(OUT_OF_FILES):
            return True
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        record.msg, record.args = ("out of file descriptors (open files limit %s): new connections wait until "
                                   "some close; said at most once a minute"), (limit,)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def fold_out_of_files_logs() -> None:
    """Install the filter on asyncio's logger (once)."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, OncePerMinute) for f in asyncio_log.filters):
        asyncio_log.addFilter(OncePerMinute())
