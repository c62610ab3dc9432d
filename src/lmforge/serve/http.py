"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's head (request line and headers).

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but any byte cancels that timer and
nothing re-arms it, and no timer runs before a connection's first request: a client that connects and sends
nothing, or trickles its headers a byte at a time, was held open for as long as it liked (slowloris). Here a
connection must complete each request head within `head_timeout` seconds of connecting or of its previous response;
the request body has its own deadline (serve/app.py's BodyLimit).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineProtocol(H11Protocol):
    head_timeout = 10.0  # seconds; server_config sets it from create_app's body_timeout

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_head_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE:  # waiting for the next request's head (not pipelined already)
            self.arm_head_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if (
            self.conn.their_state is not h11.IDLE
        ):  # a request's head has arrived: its body has its own deadline
            self.disarm_head_deadline()

    def arm_head_deadline(self) -> None:
        self.disarm_head_deadline()
        self.head_deadline = self.loop.call_later(self.head_timeout, self.head_too_slow)

    def disarm_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def head_too_slow(self) -> None:
        self.head_deadline = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.transport.close()
