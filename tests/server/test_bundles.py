"""Bundles against the real relay (docs/PROTOCOL.md §3.6): the ``lightbox.bundle`` subprotocol
selected only when a client asks, several sends in one websocket message each accepted (or
refused) as if alone and delivered in order, and a bundle from a client that did not ask
refused with nothing in it stored; and the compression every browser offers, declined."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from protocol import frames as f
from protocol.errors import ErrorCode
from protocol.session import ClientSession, ErrorEvent, FrameReceived, SessionReady
from tests.helpers import seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


class Raw:
    """A device's websocket driven by hand, to see each websocket message as it comes."""

    def __init__(self, ws: ClientConnection, session: ClientSession) -> None:
        self.ws, self.session = ws, session
        self.messages: list[f.Frame] = []  # each websocket message received (bundles whole)

    async def write(self) -> int:
        out = self.session.data_to_send()
        for data in out:
            await self.ws.send(data)
        return len(out)

    async def frames(self, want: int, timeout: float = 10.0) -> list[f.Frame]:
        """The next ``want`` frames, bundles taken apart by the session."""
        got: list[f.Frame] = []
        async with asyncio.timeout(seconds(timeout)):
            while len(got) < want:
                data = await self.ws.recv(decode=False)
                self.messages.append(f.decode_frame(data))
                for ev in self.session.receive_data(data):
                    assert not isinstance(ev, ErrorEvent), ev
                    if isinstance(ev, FrameReceived) and not isinstance(ev.frame, f.Ping):
                        got.append(ev.frame)
        return got


async def raw(world: World, p: Peer, subprotocols: list[str] | None,
              compression: str | None = None) -> Raw:
    session = ClientSession(access_token=p.token, device_id=p.device_id, client="test",
                            client_version="1", sign=p.device.keys.sign)
    ws = await ws_connect(world.relay.ws_url + "/v1/ws", compression=compression,
                          subprotocols=[Subprotocol(s) for s in subprotocols or []] or None)
    if ws.subprotocol == f.BUNDLE_SUBPROTOCOL:
        session.use_bundles()
    r = Raw(ws, session)
    ready = False
    while not ready:
        await r.write()
        for ev in session.receive_data(await ws.recv(decode=False)):
            ready = ready or isinstance(ev, SessionReady)
    await r.write()
    while not isinstance((await r.frames(1))[0], f.QueueEmpty):  # keys_low may come first
        pass
    r.messages.clear()
    return r


async def stored_messages(world: World) -> int:
    db = await world.db()
    try:
        return int(await db.fetchval("SELECT count(*) FROM messages"))
    finally:
        await db.close()


async def test_the_relay_selects_the_subprotocol_only_for_a_client_that_asks(
        world: World) -> None:
    alice = await peer(world, "alice")
    for asked, selected in [([f.BUNDLE_SUBPROTOCOL], f.BUNDLE_SUBPROTOCOL), (None, None),
                            (["chat.v2"], None), (["chat.v2", f.BUNDLE_SUBPROTOCOL],
                                                  f.BUNDLE_SUBPROTOCOL)]:
        r = await raw(world, alice, asked)
        assert r.ws.subprotocol == selected, asked
        await r.ws.close()
    sock = await connect(world, alice)  # the Python SDK asks
    assert sock._session.bundles
    await sock.close()


async def test_the_relay_declines_the_compression_a_browser_offers_and_the_session_works(
        world: World) -> None:
    """Every browser offers permessage-deflate (RFC 7692); the relay answers without it
    (server/runner.py says why: ciphertext does not compress, and deflating it nearly doubled
    the relay's CPU per message). The client then sends and receives uncompressed, as any
    websocket client must when the server accepts no extension (RFC 6455 §9.1)."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    a = await raw(world, alice, [f.BUNDLE_SUBPROTOCOL], compression="deflate")
    b = await raw(world, bob, None, compression="deflate")
    try:
        for r in (a, b):
            assert r.ws.request is not None and r.ws.response is not None
            offered = r.ws.request.headers.get("Sec-WebSocket-Extensions", "")
            assert offered.startswith("permessage-deflate")
            assert "Sec-WebSocket-Extensions" not in r.ws.response.headers
            assert r.ws.protocol.extensions == []
        a.session.send(f.Send(req_id="r0", message=seal(alice, tid, [bob], b"AP view")))
        await a.write()
        assert isinstance((await a.frames(1))[0], f.Accepted)
        delivered = (await b.frames(1))[0]
        assert isinstance(delivered, f.Deliver)
        assert opened(bob, alice, delivered.message) == b"AP view"
    finally:
        await a.ws.close()
        await b.ws.close()


async def test_sends_in_one_bundle_are_each_accepted_and_delivered_in_thread_order(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    a = await raw(world, alice, [f.BUNDLE_SUBPROTOCOL])
    b = await raw(world, bob, [f.BUNDLE_SUBPROTOCOL])
    try:
        bodies = [b"AP view first", b"then the lateral", b"and the oblique"]
        sealed = [seal(alice, tid, [bob], body) for body in bodies]
        for i, m in enumerate(sealed):
            a.session.send(f.Send(req_id=f"r{i}", message=m))
        assert await a.write() == 1  # three sends, one websocket message
        answers = await a.frames(3)
        assert sorted(x.req_id for x in answers if isinstance(x, f.Accepted)) == ["r0", "r1", "r2"]
        delivered = await b.frames(3)
        assert all(isinstance(d, f.Deliver) for d in delivered)
        assert [opened(bob, alice, d.message) for d in delivered] == bodies  # type: ignore[union-attr]
        assert [d.thread_seq for d in delivered] == sorted(  # type: ignore[union-attr]
            d.thread_seq for d in delivered)  # type: ignore[union-attr]
        # What the relay wrote together came together: the three answers of one batch, and
        # the three deliveries of one pump turn, each in fewer websocket messages than frames.
        assert len(a.messages) < 3
        assert len(b.messages) < 3
        assert any(isinstance(m, f.Bundle) for m in b.messages)
        b.session.send(f.Ack(delivery_ids=[d.delivery_id for d in delivered]))  # type: ignore[union-attr]
        await b.write()
    finally:
        await a.ws.close()
        await b.ws.close()


async def test_a_bad_frame_in_a_bundle_is_refused_alone_and_its_neighbours_are_stored(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    a = await raw(world, alice, [f.BUNDLE_SUBPROTOCOL])
    try:
        good = [seal(alice, tid, [bob], b"one"), seal(alice, tid, [bob], b"two")]
        forged = seal(alice, tid, [bob], b"forged")
        forged = msgspec.structs.replace(forged, signature=bytes(64))
        malformed = msgspec.msgpack.encode({"t": "send", "req_id": "broken", "message": 7})
        await a.ws.send(f.encode_frame(f.Bundle(frames=[
            f.encode_frame(f.Send(req_id="ok-1", message=good[0])),
            malformed,
            f.encode_frame(f.Send(req_id="forged", message=forged)),
            f.encode_frame(f.Send(req_id="ok-2", message=good[1])),
        ])))
        answers = {getattr(x, "req_id", None): x for x in await a.frames(4)}
        assert isinstance(answers["ok-1"], f.Accepted)
        assert isinstance(answers["ok-2"], f.Accepted)
        broken, bad_sig = answers["broken"], answers["forged"]
        assert isinstance(broken, f.Error)
        assert (broken.code, broken.fatal) == (ErrorCode.MALFORMED_FRAME, False)
        assert isinstance(bad_sig, f.Error)
        assert bad_sig.code is ErrorCode.SENDER_MISMATCH
        assert await stored_messages(world) == 2
        # The connection is still usable.
        a.session.send(f.Send(req_id="after", message=seal(alice, tid, [bob], b"three")))
        await a.write()
        (after,) = await a.frames(1)
        assert isinstance(after, f.Accepted)
    finally:
        await a.ws.close()


async def test_a_bundle_from_a_client_that_did_not_ask_is_refused_and_nothing_in_it_stored(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    a = await raw(world, alice, None)
    try:
        assert a.ws.subprotocol is None
        req = uuid.uuid4().hex
        await a.ws.send(f.encode_frame(f.Bundle(frames=[
            f.encode_frame(f.Send(req_id=req, message=seal(alice, tid, [bob], b"x")))])))
        data = await asyncio.wait_for(a.ws.recv(decode=False), seconds(10))
        error = f.decode_frame(data)
        assert isinstance(error, f.Error)
        assert (error.code, error.fatal) == (ErrorCode.UNEXPECTED_FRAME, False)
        assert "lightbox.bundle" in error.detail
        assert await stored_messages(world) == 0
    finally:
        await a.ws.close()
