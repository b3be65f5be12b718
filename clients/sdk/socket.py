"""The device's websocket to the relay: the I/O shell around protocol.session.ClientSession.

:class:`RelaySocket` is one connection: handshake (access token + challenge signed by the device
key), ``send`` that returns only once the relay answered ``accepted`` (the message is durable)
or raises :class:`SendRefused` with the relay's code, an event queue for deliveries and notices,
and ``ack``. Reconnection with backoff and de-duplication live in
:class:`clients.sdk.connection.Connection`, built on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from clients.sdk.addresses import tls_context
from protocol.errors import ErrorCode
from protocol.frames import (
    BUNDLE_SUBPROTOCOL,
    DEFAULT_MAX_FRAME,
    Accepted,
    Ack,
    Error,
    Frame,
    Ready,
    Send,
)
from protocol.model import SealedMessage
from protocol.session import ClientSession, ErrorEvent, FrameReceived, SessionReady

__all__ = ["RelaySocket", "SendRefused", "SocketClosed"]


class SocketClosed(ConnectionError):
    """The websocket is closed (``code`` and ``reason`` as the relay sent them)."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"relay connection closed ({code}: {reason})")
        self.code, self.reason = code, reason


@dataclasses.dataclass
class SendRefused(Exception):
    """The relay refused a send (nothing was stored)."""

    code: str
    detail: str = ""
    retry_after: float | None = None
    missing: list[str] | None = None
    extra: list[str] | None = None
    stale: list[str] | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class RelaySocket:
    def __init__(self, ws: ClientConnection, session: ClientSession) -> None:
        self._ws = ws
        self._session = session
        self.ready: Ready | None = None
        self.events: asyncio.Queue[Frame] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[Accepted]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future())

    @classmethod
    async def connect(
        cls, url: str, *, access_token: str, device_id: str, sign: Callable[[bytes], bytes],
        client: str = "lightbox-sdk", client_version: str = "0.1.0",
        open_timeout: float = 10.0, max_frame: int = DEFAULT_MAX_FRAME, bundles: bool = True,
    ) -> RelaySocket:
        """Open ``url`` (``ws(s)://host/v1/ws``) and authenticate; raises SocketClosed with the
        relay's close code when it refuses (without one when the upgrade itself was answered
        with an HTTP error). With ``bundles``, ask for the ``lightbox.bundle``
        subprotocol (docs/PROTOCOL.md §3.6): a relay that selects it may put several frames in
        one websocket message; one that does not (an older relay) sends them one by one."""
        session = ClientSession(access_token=access_token, device_id=device_id, client=client,
                                client_version=client_version, sign=sign,
                                max_frame_size=max_frame)
        try:
            ws = await connect(
                url, max_size=max_frame, ping_interval=None, open_timeout=open_timeout,
                compression=None, ssl=tls_context() if url.lower().startswith("wss:") else None,
                subprotocols=[Subprotocol(BUNDLE_SUBPROTOCOL)] if bundles else None)
        except websockets.InvalidHandshake as exc:
            # Answered over HTTP instead of upgraded: a relay shutting down (503), or a proxy
            # in front of one that is restarting. The relay refuses a device inside the
            # websocket (close codes), never here, so this is worth another try: as a closed
            # socket without a code, never an error that ends the reconnecting loop.
            raise SocketClosed(None, f"the relay did not open the websocket: {exc}") from exc
        if ws.subprotocol == BUNDLE_SUBPROTOCOL:
            session.use_bundles()
        sock = cls(ws, session)
        try:
            async with asyncio.timeout(open_timeout):
                await sock._flush()
                while sock.ready is None:
                    data = await ws.recv(decode=False)
                    for ev in session.receive_data(data):
                        if isinstance(ev, SessionReady):
                            sock.ready = ev.ready
                        elif isinstance(ev, FrameReceived) and isinstance(ev.frame, Error):
                            sock.handshake_error = ev.frame
                    await sock._flush()
        except websockets.ConnectionClosed as exc:
            # Closed while authenticating, reading or writing (a relay shutting down closes
            # with 1001 between the upgrade and ``ready``): a closed socket, tried again unless
            # its code is final; never an error that ends the reconnecting loop.
            await ws.close()
            raise SocketClosed(exc.rcvd.code if exc.rcvd else None,
                               exc.rcvd.reason if exc.rcvd else "") from exc
        except BaseException:
            await ws.close()
            raise
        sock._reader = asyncio.create_task(sock._read_loop(), name="relay-socket-reader")
        return sock

    handshake_error: Error | None = None

    @property
    def device_id(self) -> str:
        assert self.ready is not None
        return self.ready.device_id

    async def _flush(self) -> None:
        for data in self._session.data_to_send():
            await self._ws.send(data)

    async def _read_loop(self) -> None:
        code: int | None = None
        reason = ""
        try:
            async for data in self._ws:
                if isinstance(data, str):
                    continue
                for ev in self._session.receive_data(data):
                    if isinstance(ev, FrameReceived):
                        self._dispatch(ev.frame)
                    elif isinstance(ev, ErrorEvent):
                        await self._ws.close(int(ev.close_code or 4000), ev.code.value)
                await self._flush()
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws.close_code is not None:
                code, reason = self._ws.close_code, self._ws.close_reason or ""
            err = SocketClosed(code, reason)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()
            if not self.closed.done():
                self.closed.set_result((code, reason))

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Accepted):
            fut = self._pending.pop(frame.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return
        if isinstance(frame, Error) and frame.req_id is not None:
            fut = self._pending.pop(frame.req_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(SendRefused(
                    frame.code.value, frame.detail, frame.retry_after, frame.missing,
                    frame.extra, frame.stale))
                return
        self.events.put_nowait(frame)

    async def send_frame(self, frame: Frame) -> None:
        if self.closed.done():
            raise SocketClosed(*self.closed.result())
        self._session.send(frame)
        try:
            await self._flush()
        except websockets.ConnectionClosed as exc:
            raise SocketClosed(self._ws.close_code, self._ws.close_reason or "") from exc

    async def send(self, message: SealedMessage, *, req_id: str | None = None,
                   timeout: float = 30.0) -> Accepted:
        """Send a sealed message; returns the relay's ``accepted`` (durable) or raises
        SendRefused / SocketClosed / TimeoutError (then the outcome is unknown: retry with the
        same message, sends are idempotent)."""
        req_id = req_id or uuid.uuid4().hex
        fut: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self.send_frame(Send(req_id=req_id, message=message))
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(req_id, None)

    async def ack(self, delivery_ids: list[str]) -> None:
        for i in range(0, len(delivery_ids), 256):
            await self.send_frame(Ack(delivery_ids=delivery_ids[i:i + 256]))

    async def next_event(self, timeout: float = 10.0) -> Frame:
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def close(self, code: int = 1000) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close(code)
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader


def is_retryable(code: str) -> bool:
    """Whether a refused send may succeed if retried later as is."""
    return code in {ErrorCode.RATE_LIMITED.value, ErrorCode.QUEUE_FULL.value,
                    ErrorCode.INTERNAL_ERROR.value, ErrorCode.NOT_READY.value}
