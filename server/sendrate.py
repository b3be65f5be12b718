"""How fast one websocket may send (docs/SECURITY.md "Limits"): token buckets per connection.

Each connection may send ``messages_per_minute`` messages and ``bytes_per_minute`` bytes of
ciphertext and wrapped keys, in bursts of up to a minute's worth. A send over either is
refused with ``rate_limited`` and the seconds to wait (``retry_after``); the connection stays
open. Time is the relay's injected clock.
"""

from __future__ import annotations

from protocol.errors import ErrorCode
from protocol.model import SealedMessage
from server.errors import RelayError

__all__ = ["Bucket", "SendRate"]


class Bucket:
    """Token bucket: ``per_minute`` units a minute, bursts up to one minute's worth."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.at = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount``; returns 0 on success or the seconds to wait."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate


class SendRate:
    """The two budgets of one connection."""

    def __init__(self, *, messages_per_minute: int, bytes_per_minute: int, now: float) -> None:
        self.messages = Bucket(messages_per_minute, now)
        self.bytes = Bucket(bytes_per_minute, now)

    def admit(self, message: SealedMessage, now: float) -> None:
        """Charge one message and its size to the budgets; RelayError(rate_limited) with
        ``retry_after`` when either is spent."""
        size = len(message.ciphertext) + sum(len(k.wrapped) for k in message.keys)
        wait = max(self.messages.take(1, now), self.bytes.take(size, now))
        if wait > 0:
            raise RelayError(ErrorCode.RATE_LIMITED, "too many messages; slow down",
                             retry_after=wait)
