"""The gateway's connection to the relay: deliveries are filed beside the read loop, so the
relay's answer to a filing statement reaches the gateway while the filing waits for it; each
delivery is acknowledged only once its filing finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from clients.sdk.connection import Connection
from clients.sdk.socket import RelaySocket, SocketClosed
from protocol.frames import Deliver, Frame

__all__ = [
    "GatewayConnection",
    "where",
]

log = logging.getLogger("lightbox.gateway")


def where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised: enough to find a bug, without its message."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "?" if tb is None else f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:" \
        f"{tb.tb_lineno}"


class GatewayConnection(Connection):
    """A Connection that files deliveries beside the read loop rather than inside it, so the
    relay's answer to a filing statement (``filed_notice`` or ``error``) reaches the gateway
    while the filing waits for it. Each delivery is still acknowledged only after its filing
    finished (filed, or failed for good); one that is interrupted is delivered again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy: set[tuple[str, str]] = set()
        self._jobs: set[asyncio.Task[None]] = set()

    async def _handle(self, sock: RelaySocket, frame: Frame) -> None:
        if not isinstance(frame, Deliver):
            await super()._handle(sock, frame)
            return
        h = frame.message.header
        key = (h.sender_device_id, h.message_id)
        if self.dedupe.seen(*key):
            await sock.ack([frame.delivery_id])
            return
        if key in self._busy:
            return  # redelivered while its filing is still running
        self._busy.add(key)
        job = asyncio.create_task(self._file(sock, frame, key))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _file(self, sock: RelaySocket, frame: Deliver, key: tuple[str, str]) -> None:
        try:
            await self._on_message(frame)
            self.dedupe.add(*key)
            with contextlib.suppress(SocketClosed, ConnectionError):
                await sock.ack([frame.delivery_id])
        except Exception as exc:  # not acknowledged: the relay delivers it again
            # The type and the place, not the message or the traceback's values: an
            # exception's text may quote the record data.
            log.warning("filing of message %s interrupted (%s at %s); the relay will deliver "
                        "it again", key[1], type(exc).__name__, where(exc),
                        extra={"message_id": key[1], "error_type": type(exc).__name__})
        finally:
            self._busy.discard(key)

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await super().stop()
