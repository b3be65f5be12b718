"""A relay that misbehaves on the websocket, for the phone's bad-input tests: a proxy in front
of the real relay that passes HTTP through untouched, and stands in the middle of each
websocket, one message for one message, so a test can see what the phone asked for and sent
and how it closed, keep the phone's subprotocol request from the relay, and replace what the
relay wrote with messages of its own (a bundle where none may come, a bad frame inside one).

The phone's app is configured with the proxy as its relay (its CSP names the proxy's origin);
the relay lets the phone's origin call it, as in :func:`phone_world.phone_world`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.typing import Origin, Subprotocol

from clients.phone.serve import PhoneConfig
from protocol.frames import Bundle, Frame, decode_frame, encode_frame
from tests.identity_world import World, identity_world
from tests.phone.phone_world import bound_socket, running_phone, serving

__all__ = ["FrameProxy", "Tamper", "bundle_of", "hostile_phone_world"]

Tamper = Callable[[bytes, Frame], list[bytes] | None]
"""Given one message the relay wrote (and its frame), the messages to write to the phone
instead, or None to pass it on as it is."""

# Hop-by-hop headers (RFC 9110 §7.6.1), and those httpx recomputes or has already undone.
_REQUEST_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length",
                 "upgrade", "te", "trailer", "proxy-connection"}
_ANSWER_DROP = {"connection", "keep-alive", "transfer-encoding", "content-length",
                "content-encoding", "trailer", "upgrade"}


def bundle_of(*messages: bytes) -> bytes:
    """A ``bundle`` frame carrying ``messages`` as they are (any bytes: the codec under test is
    the phone's, so a bad entry is written as it is)."""
    return encode_frame(Bundle(frames=list(messages)))


@dataclass
class FrameProxy:
    """Forwards to the relay at ``relay`` (HTTP) and ``relay_ws`` (its websocket URL)."""

    relay: str
    relay_ws: str
    pass_subprotocol: bool = True
    """Ask the relay for what the phone asked for (False: for nothing, so it selects nothing)."""
    tamper: Tamper | None = None
    """Applied to each message the relay writes until it replaces one; then it is spent."""
    offered: list[list[str]] = field(default_factory=list)
    """The subprotocols each of the phone's upgrade requests asked for, by connection."""
    selected: list[str | None] = field(default_factory=list)
    """The subprotocol the phone got on each connection (what the relay selected)."""
    tampered: list[int] = field(default_factory=list)
    """The connections on which the tamper replaced a message."""
    from_phone: list[tuple[int, Frame]] = field(default_factory=list)
    """Every frame the phone wrote, with its connection (a bundle's frames one by one)."""
    closes: dict[int, tuple[int, str]] = field(default_factory=dict)
    """How the phone closed each connection it closed itself: code and reason."""

    def sent(self, connection: int) -> list[Frame]:
        return [f for n, f in self.from_phone if n == connection]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """The proxy listening on loopback; yields its base URL."""
        sock, _ = bound_socket()
        app = Starlette(routes=[
            WebSocketRoute("/v1/ws", self._websocket),
            Route("/{path:path}", self._http,
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ])
        server = uvicorn.Server(uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off",
            ws="websockets-sansio", ws_per_message_deflate=False))
        async with httpx.AsyncClient(base_url=self.relay, timeout=30) as client, \
                serving(server, sock) as origin:
            self._client = client
            yield origin

    async def _http(self, request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP]
        try:
            answer = await self._client.request(
                request.method, request.url.path, params=request.url.query or None,
                content=await request.body(), headers=headers)
        except httpx.TransportError:  # the relay is gone (the test is ending)
            return Response(status_code=502)
        response = Response(answer.content, answer.status_code)
        response.raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.multi_items() if k.lower() not in _ANSWER_DROP
        ] + [(b"content-length", str(len(answer.content)).encode())]
        return response

    async def _websocket(self, phone: WebSocket) -> None:
        n = len(self.offered)
        offered = list(phone.scope.get("subprotocols", []))
        self.offered.append(offered)
        ask = [Subprotocol(p) for p in offered] if self.pass_subprotocol else None
        origin = phone.headers.get("origin")
        async with websockets.connect(self.relay_ws, subprotocols=ask or None,
                                      origin=Origin(origin) if origin else None,
                                      compression=None, max_size=None,
                                      ping_interval=None) as relay:
            self.selected.append(relay.subprotocol)
            await phone.accept(subprotocol=relay.subprotocol)
            down = asyncio.create_task(self._down(n, relay, phone))
            up = asyncio.create_task(self._up(n, phone, relay))
            done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
            if up in done:  # the phone closed: so does the relay's side
                down.cancel()
                with contextlib.suppress(BaseException):
                    await down
            else:  # the relay closed: the phone hears its code
                with contextlib.suppress(Exception):
                    await phone.close(relay.close_code or 1000, relay.close_reason or "")
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(up, 5)
            await relay.close()

    async def _down(self, n: int, relay: Any, phone: WebSocket) -> None:
        """What the relay writes, to the phone (or what the tamper puts instead)."""
        # The relay or the phone gone: the other side closes (see _websocket).
        with contextlib.suppress(websockets.ConnectionClosed, WebSocketDisconnect, RuntimeError,
                                 OSError):
            async for data in relay:
                if isinstance(data, str):
                    continue
                out = [data]
                if self.tamper is not None:
                    replaced = self.tamper(data, decode_frame(data))
                    if replaced is not None:
                        self.tamper = None
                        self.tampered.append(n)
                        out = replaced
                for message in out:
                    await phone.send_bytes(message)

    async def _up(self, n: int, phone: WebSocket, relay: Any) -> None:
        """What the phone writes, recorded, to the relay; how the phone closed."""
        while True:
            message = await phone.receive()
            if message["type"] == "websocket.disconnect":
                self.closes[n] = (int(message.get("code", 1005)), message.get("reason") or "")
                return
            data = message.get("bytes")
            if data is None:
                continue
            frame = decode_frame(data)
            for one in ([decode_frame(f) for f in frame.frames] if isinstance(frame, Bundle)
                        else [frame]):
                self.from_phone.append((n, one))
            with contextlib.suppress(websockets.ConnectionClosed):
                await relay.send(data)


@contextlib.asynccontextmanager
async def hostile_phone_world(db_dsn: str, tmp: Path, *, autolock_seconds: int = 600
                              ) -> AsyncIterator[tuple[World, str, FrameProxy]]:
    """:func:`phone_world.phone_world` with the phone reaching the relay through a
    :class:`FrameProxy`; yields the world, the phone's origin and the proxy."""
    sock, port = bound_socket()
    async with identity_world(db_dsn, tmp, phone_origins=f"http://127.0.0.1:{port}") as world:
        proxy = FrameProxy(world.relay.base_url, world.relay.ws_url + "/v1/ws")
        async with proxy.running() as relay_via_proxy, running_phone(
                PhoneConfig(relay_via_proxy, kdf="cheap", autolock_seconds=autolock_seconds),
                sock) as origin:
            yield world, origin, proxy
