"""Connections of ``toon-serve``: what a client may hold open before it has sent a request.

uvicorn times out nothing until a first response was sent: a socket that connects and sends
nothing, or a request head a byte at a time, is kept for ever, and enough of them exhaust the
file descriptors (then every ``accept()`` fails and asyncio logs a traceback per attempt). Here:

- :class:`ServeProtocol` (uvicorn's h11 protocol, plus two rules): a connection that has no
  complete request head within ``header_timeout_s`` (after it opened, or after its last
  response) is closed; and at most ``max_connections`` are open: past it, the connection idle
  longest is closed to make room, or the new one is answered 503 when every one is busy.
- :func:`connection_cap`: ``max_connections`` kept under the file-descriptor limit.
- (:class:`export.serve_metrics.LoopErrorLog` logs asyncio's own errors, such as a failed
  ``accept()``, as rate-limited JSON lines without a traceback.)

    uvicorn.run(app, http=functools.partial(ServeProtocol, limits=ConnectionLimits(10.0, 1000)))

Imports: uvicorn, h11 and the standard library.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

FD_RESERVE = 64  # descriptors kept for everything but client connections (model, logs, pools)
MIN_CONNECTIONS = 8  # below this the service cannot work: refuse to start


@dataclass(frozen=True)
class ConnectionLimits:
    """What one worker process allows its client connections."""

    header_timeout_s: float = 10.0  # a request head (line + headers) must arrive within this
    max_connections: int = 1000  # open connections; past it the longest idle one is closed


def _busy_answer() -> bytes:
    body = json.dumps(
        {"error": "too many open connections; retry later", "kind": "overloaded"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: 1\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


BUSY_ANSWER = _busy_answer()


class ServeProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a cap on open connections (see
    the module docstring). A connection is *idle* from when it opens, and again from each
    complete response, until the next request head is complete."""

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ConnectionLimits()
        self.idle_since: float | None = None  # loop time the connection went idle; None: busy
        self._idle_cycle: Any = None  # the request cycle current when it went idle
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._go_idle()
        if len(self.connections) > self.limits.max_connections and not self._evict_idle():
            transport.write(BUSY_ANSWER)  # every other connection is busy with a request
            transport.close()

    def _evict_idle(self) -> bool:
        """Close the connection idle longest (not this one); False when none is idle."""
        idle = [
            c
            for c in self.connections
            if c is not self and getattr(c, "idle_since", None) is not None
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        oldest._close_idle()
        return True

    def _go_idle(self) -> None:
        self._cancel_head_timer()
        self._idle_cycle = self.cycle
        self.idle_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._close_idle)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close_idle(self) -> None:
        """No request head in time (or room needed): close, unless a request has started."""
        self._head_timer = None
        if self.idle_since is None or self.transport.is_closing():
            return
        self.idle_since = None
        self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.idle_since is not None and self.cycle is not self._idle_cycle:
            self.idle_since = None  # a request head arrived: the app has it now
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._go_idle()  # first: a pipelined request started below makes it busy again
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle_since = None
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self.idle_since = None
        self._cancel_head_timer()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            super().send_400_response(msg)
        else:
            self.transport.close()


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to fit the file-descriptor limit (``RLIMIT_NOFILE``, whose
    soft value is first raised towards the hard one when that helps) less :data:`FD_RESERVE`.
    :class:`ValueError` when fewer than :data:`MIN_CONNECTIONS` would fit."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to read
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (OSError, ValueError):
                pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    cap = min(max_connections, soft - max(FD_RESERVE, 2 * in_use))
    if cap < MIN_CONNECTIONS:
        raise ValueError(
            f"the open-file limit ({soft}) leaves room for {max(cap, 0)} connections; "
            f"raise it (ulimit -n {max_connections + FD_RESERVE})"
        )
    return cap
