"""Registry of the open websocket connections of this relay process.

Graceful shutdown closes every one of them with 1001 (going away, RFC 6455 §7.4.1) before the
server stops, so clients reconnect to another process at once instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Closable", "Hub"]

log = logging.getLogger("lightbox.hub")


class Closable(Protocol):
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Hub:
    def __init__(self) -> None:
        self._conns: set[Closable] = set()
        self.accepting = True

    def add(self, conn: Closable) -> None:
        self._conns.add(conn)

    def discard(self, conn: Closable) -> None:
        self._conns.discard(conn)

    def __len__(self) -> int:
        return len(self._conns)

    async def close_all(self, code: int = 1001, reason: str = "relay shutting down") -> None:
        self.accepting = False
        conns = list(self._conns)
        if conns:
            log.info("closing websockets", extra={"connections": len(conns), "close_code": code})
        results = await asyncio.gather(*(c.close(code, reason) for c in conns),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.debug("websocket close failed", extra={"error_type": type(r).__name__})
