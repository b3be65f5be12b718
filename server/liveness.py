"""When a websocket must ping or close (docs/PROTOCOL.md §3, docs/SECURITY.md "Limits").

Sans-I/O: the connection (server/ws.py) tells a :class:`Liveness` what it saw, and asks it, on
every tick, what is due. In this order: the user's licence has ended (4005,
``licence_expired``, on the relay's wall clock); the absolute session lifetime is reached
(4006, ``token_expired``: log in again); the device sent nothing but pings for the idle
timeout; a ping went unanswered for the heartbeat timeout; nothing at all came for a heartbeat
interval (send a ping). Independently, a delivery left unacknowledged for the acknowledgement
timeout closes the connection as too slow (4009). Elapsed times use the monotonic clock the
caller passes in, so a test drives them without waiting.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.errors import CloseCode, ErrorCode

__all__ = ["PING", "Close", "Liveness"]

PING: Literal["ping"] = "ping"


@dataclasses.dataclass(frozen=True)
class Close:
    """Close the connection with ``close_code`` (a fatal ``error`` with ``code`` first, if
    any)."""

    close_code: CloseCode
    detail: str
    code: ErrorCode | None = None


@dataclasses.dataclass
class Liveness:
    """The deadlines of one authenticated connection; times in seconds."""

    started: float  # monotonic
    heartbeat: float
    heartbeat_timeout: float
    idle_timeout: float
    session_lifetime: float
    ack_timeout: float
    licence_expires_at: int | None = None  # wall clock (epoch seconds)
    last_activity: float = dataclasses.field(init=False)  # last frame but ping/pong: idle
    last_seen: float = dataclasses.field(init=False)  # last frame of any kind: heartbeat
    ping_sent_at: float | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        self.last_activity = self.last_seen = self.started

    def seen(self, now: float, *, activity: bool) -> None:
        """A frame came at ``now``: ``activity`` for anything but a ping or a pong. A pong or
        any activity answers the outstanding ping."""
        self.last_seen = now
        if activity:
            self.last_activity = now
            self.ping_sent_at = None

    def pong(self, now: float) -> None:
        self.seen(now, activity=False)
        self.ping_sent_at = None

    def due(self, now: float, wall: float,
            oldest_unacknowledged: float | None) -> Close | Literal["ping"] | None:
        """What the connection must do at monotonic ``now`` and wall-clock ``wall``, given
        when its oldest unacknowledged delivery was sent (monotonic; None if none)."""
        close: Close | None = None
        if self.licence_expires_at is not None and wall >= self.licence_expires_at:
            close = Close(CloseCode.USER_SUSPENDED, "the user's licence has expired",
                          ErrorCode.LICENCE_EXPIRED)
        elif now - self.started >= self.session_lifetime:
            close = Close(CloseCode.SESSION_EXPIRED, "session lifetime reached; log in again",
                          ErrorCode.TOKEN_EXPIRED)
        elif now - self.last_activity >= self.idle_timeout:
            close = Close(CloseCode.IDLE_TIMEOUT, "idle")
        elif self.ping_sent_at is not None:
            if now - self.ping_sent_at >= self.heartbeat_timeout:
                close = Close(CloseCode.HEARTBEAT_TIMEOUT, "no pong")
        elif now - self.last_seen >= self.heartbeat:
            self.ping_sent_at = now
            return PING
        if close is None and oldest_unacknowledged is not None \
                and now - oldest_unacknowledged >= self.ack_timeout:
            close = Close(CloseCode.TOO_SLOW, "deliveries not acknowledged")
        return close
