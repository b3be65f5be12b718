"""The ceiling: a bare websocket relay on the relay's own stack (Starlette, uvicorn with
``websockets-sansio`` on uvloop, the protocol's msgspec frame codec), with no persistence, no
authentication, no signature check and no database.

A device connects to ``/ws?me=I&peer=J``. For each ``send`` frame it gets ``accepted`` at once,
and the message goes to the peer's socket as a ``deliver`` frame; acknowledgements and pongs
are read and dropped. Peers must be connected to the same process (bench/relay.py puts both
devices of a pair on the same port), so this is the cost of the websocket path alone.

Run: ``python -m bench.bare --port P`` (one process per port).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol.errors import DecodeError
from protocol.frames import DEFAULT_MAX_FRAME, Accepted, Deliver, Send, decode_frame, encode_frame

__all__ = ["app", "main"]

_peers: dict[int, WebSocket] = {}


async def _endpoint(ws: WebSocket) -> None:
    me, peer = int(ws.query_params["me"]), int(ws.query_params["peer"])
    await ws.accept()
    _peers[me] = ws
    seq = 0
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                continue
            try:
                frame = decode_frame(data)
            except DecodeError:
                continue
            if not isinstance(frame, Send):
                continue  # ack, pong
            seq += 1
            h = frame.message.header
            now = int(time.time())
            await ws.send_bytes(encode_frame(Accepted(
                req_id=frame.req_id, message_id=h.message_id, thread_id=h.thread_id,
                thread_seq=seq, server_time=now, duplicate=False)))
            target = _peers.get(peer)
            if target is not None:
                with contextlib.suppress(Exception):
                    await target.send_bytes(encode_frame(Deliver(
                        delivery_id=str(uuid.uuid4()), thread_seq=seq, priority=h.priority,
                        received_at=now, message=frame.message)))
    except WebSocketDisconnect:
        return
    finally:
        if _peers.get(me) is ws:
            del _peers[me]


app = Starlette(routes=[WebSocketRoute("/ws", _endpoint)])


def main() -> None:
    parser = argparse.ArgumentParser(description="bare websocket relay (benchmark ceiling)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, ws="websockets-sansio",
                ws_max_size=DEFAULT_MAX_FRAME, ws_ping_interval=None, ws_ping_timeout=None,
                lifespan="off", log_level="warning", access_log=False, server_header=False,
                backlog=4096)


if __name__ == "__main__":
    main()
