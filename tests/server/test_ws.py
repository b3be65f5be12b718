"""The websocket relay end to end: handshake, durable send, ordered delivery with
acknowledgements, receipts, replacement, revocation, shutdown, and every kind of bad input with
its exact code, the connection kept open where the protocol allows."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import websockets
import websockets.asyncio.client
from prometheus_client.parser import text_string_to_metric_families

from clients.sdk.socket import RelaySocket, SendRefused, SocketClosed
from protocol.errors import CloseCode
from protocol.frames import (
    Ack,
    Deliver,
    Error,
    Hello,
    KeysLow,
    Ping,
    Pong,
    QueueEmpty,
    Receipt,
    ReceiptNotice,
    encode_frame,
)
from protocol.keys import DeviceKeys
from protocol.model import SealedMessage
from protocol.statements import ReceiptKind, ReceiptStatement, issue_receipt_statement
from server import events
from server.store import messages
from tests.consent_world import count
from tests.helpers import eventually, running_relay, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, rate_messages_per_minute=120) as w:
        yield w


@pytest.fixture
async def trio(world: World) -> tuple[Peer, Peer, Peer]:
    return (await peer(world, "alice"), await peer(world, "bob"), await peer(world, "carol"))


async def raw(world: World) -> websockets.asyncio.client.ClientConnection:
    return await websockets.asyncio.client.connect(world.relay.ws_url + "/v1/ws",
                                                   ping_interval=None)


async def closed_with(ws: websockets.asyncio.client.ClientConnection) -> tuple[int, list[Error]]:
    errors = []
    try:
        async for data in ws:
            assert isinstance(data, bytes)  # the relay speaks binary frames only
            frame = msgspec.msgpack.decode(data)
            if frame.get("t") == "error":
                errors.append(msgspec.convert(frame, Error))
    except websockets.ConnectionClosed:
        pass
    assert ws.close_code is not None
    return ws.close_code, errors


@contextlib.asynccontextmanager
async def sockets(world: World, *peers: Peer) -> AsyncIterator[list[RelaySocket]]:
    """Each peer connected, closed again whatever the test did."""
    socks: list[RelaySocket] = []
    try:
        for p in peers:
            socks.append(await connect(world, p))
        yield socks
    finally:
        for sock in socks:
            await sock.close()


async def close_code(sock: RelaySocket, timeout: float = 15.0) -> int:
    """The close code the relay ended ``sock`` with."""
    code, _ = await asyncio.wait_for(sock.closed, seconds(timeout))
    assert code is not None
    return code


async def closed_by_list(world: World, p: Peer, **names: tuple[str, ...]) -> int:
    """Connect ``p``, then post the organisation's revocation list naming ``names``
    (``devices=``, ``users=``): the code the relay closes ``p``'s socket with."""
    sock = await connect(world, p)
    r = await world.revoke(world.org, 1, **names)
    assert r.status_code == 200, r.text
    return await close_code(sock)


async def refused_at_handshake(world: World, p: Peer, *, token: str | None = None,
                               device_id: str | None = None,
                               keys: DeviceKeys | None = None) -> tuple[int, str]:
    """Connect as ``p`` with another token, claimed device or signing key: the close code and
    reason the handshake ends with."""
    with pytest.raises(SocketClosed) as err:
        await RelaySocket.connect(world.relay.ws_url + "/v1/ws", access_token=token or p.token,
                                  device_id=device_id or p.device_id,
                                  sign=(keys or p.device.keys).sign)
    assert err.value.code is not None
    return err.value.code, err.value.reason


async def refused_send(sock: RelaySocket, sealed: SealedMessage) -> SendRefused:
    """The relay's refusal of ``sealed`` (the socket stays open)."""
    with pytest.raises(SendRefused) as err:
        await sock.send(sealed)
    return err.value


@contextlib.asynccontextmanager
async def alone(db_dsn: str, tmp_path: Path, login: str,
                **settings: Any) -> AsyncIterator[tuple[World, RelaySocket]]:
    """A relay with these settings and one connected device."""
    async with identity_world(db_dsn, tmp_path, **settings) as world:
        async with sockets(world, await peer(world, login)) as (sock,):
            yield world, sock


async def next_of(sock: RelaySocket, kind: type, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    while True:
        frame = await sock.next_event(seconds(timeout))
        if isinstance(frame, kind):
            return frame


# --- handshake ----------------------------------------------------------------------------


async def test_handshake_answers_ready_for_the_authenticated_device(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice = trio[0]
    async with sockets(world, alice) as (sock,):
        assert sock.ready is not None
        assert sock.ready.device_id == alice.device_id
        assert sock.ready.user_id == alice.user_id
        assert sock.ready.limits.send_window == world.relay.relay.settings.ws_send_window


async def test_anything_before_hello_closes_with_1008_unexpected_frame(world: World) -> None:
    ws = await raw(world)
    await ws.send(encode_frame(Ping(nonce=b"12345678")))
    code, errors = await closed_with(ws)
    assert code == CloseCode.POLICY_VIOLATION
    assert errors[0].code.value == "unexpected_frame"


async def test_wrong_protocol_version_closes_with_4008(world: World,
                                                      trio: tuple[Peer, Peer, Peer]) -> None:
    ws = await raw(world)
    await ws.send(encode_frame(Hello(versions=[99], access_token=trio[0].token,
                                     device_id=trio[0].device_id, client="t", client_version="1")))
    code, errors = await closed_with(ws)
    assert code == CloseCode.UNSUPPORTED_VERSION
    assert errors[0].code.value == "unsupported_version"


async def test_forged_token_closes_with_4001_token_invalid(world: World,
                                                          trio: tuple[Peer, Peer, Peer]) -> None:
    assert await refused_at_handshake(world, trio[0], token="e30.e30.AAAA") == (
        CloseCode.AUTH_FAILED, "token_invalid")


async def test_challenge_signed_by_another_key_closes_with_4001(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    thief = DeviceKeys.generate(trio[0].device_id)
    assert await refused_at_handshake(world, trio[0], keys=thief) == (
        CloseCode.AUTH_FAILED, "challenge_failed")


async def test_token_of_another_device_closes_with_token_device_mismatch(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    assert await refused_at_handshake(world, bob, token=alice.token) == (
        CloseCode.AUTH_FAILED, "token_device_mismatch")


async def test_silence_after_connecting_closes_with_4002(db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, ws_auth_timeout=0.3) as w:
        ws = await raw(w)
        code, _ = await asyncio.wait_for(closed_with(ws), seconds(5))
    assert code == CloseCode.AUTH_TIMEOUT


# --- sending and delivery --------------------------------------------------------------------


async def test_send_is_accepted_then_delivered_opened_acknowledged_and_receipted(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice, bob) as (a, b):
        await next_of(b, QueueEmpty)
        sealed = seal(alice, tid, [bob], b"fracture of the distal radius?")
        acc = await a.send(sealed)
        assert (acc.thread_id, acc.thread_seq, acc.duplicate) == (tid, 1, False)
        d = await next_of(b, Deliver)
        assert d.message.header.message_id == sealed.header.message_id
        assert opened(bob, alice, d.message) == b"fracture of the distal radius?"
        await b.ack([d.delivery_id])
        stmt = issue_receipt_statement(ReceiptStatement(
            v=1, device_id=bob.device_id, message_id=sealed.header.message_id, thread_id=tid,
            kind=ReceiptKind.DELIVERED, at=acc.server_time), bob.device.keys.signing)
        await b.send_frame(Receipt(statement=stmt))
        notice = await next_of(a, ReceiptNotice)
        assert (notice.device_id, notice.kind.value) == (bob.device_id, "delivered")

        async def removed() -> bool:  # an ack has no answer: its removal commits on its own
            return await count(world, "SELECT count(*) FROM deliveries") == 0
        await eventually(removed)


async def test_metrics_count_the_deliveries_written_to_connected_devices_until_acknowledged(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)

    async def written_unacknowledged() -> float:
        text = (await world.http.get("/metrics")).text
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == "lightbox_queue_depth_connected")
    async with sockets(world, alice, bob) as (a, b):
        await next_of(b, QueueEmpty)
        assert await written_unacknowledged() == 0
        await a.send(seal(alice, tid, [bob], b"one"))
        await a.send(seal(alice, tid, [bob], b"two"))
        first, second = await next_of(b, Deliver), await next_of(b, Deliver)
        assert await written_unacknowledged() == 2
        await b.ack([first.delivery_id])

        async def one_left() -> bool:
            return await written_unacknowledged() == 1
        await eventually(one_left)
        await b.ack([second.delivery_id])

        async def none_left() -> bool:
            return await written_unacknowledged() == 0
        await eventually(none_left)


async def test_a_notice_committed_after_a_later_numbered_one_still_reaches_the_device(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    """Notice numbers are drawn at insert, not at commit: two receipts queued at once can
    commit in the other order. The one that commits last still reaches the open socket."""
    alice, _, _ = trio
    async with sockets(world, alice) as (a,):
        await next_of(a, QueueEmpty)
        slow, quick = await world.db(), await world.db()
        try:
            when = dt.datetime.now(dt.UTC)

            def receipt(kind: ReceiptKind) -> bytes:
                body = ReceiptStatement(v=1, device_id=alice.device_id,
                                        message_id=str(uuid.uuid4()),
                                        thread_id=str(uuid.uuid4()), kind=kind, at=1)
                return encode_frame(ReceiptNotice(
                    message_id=body.message_id, device_id=alice.device_id,
                    user_id=alice.user_id, kind=kind, at=1,
                    statement=issue_receipt_statement(body, alice.device.keys.signing)))

            late, early = receipt(ReceiptKind.READ), receipt(ReceiptKind.DELIVERED)
            tx = slow.transaction()
            await tx.start()
            await messages.add_notices(slow, [alice.device_id], "receipt", late, now=when)
            await messages.add_notices(quick, [alice.device_id], "receipt", early, now=when)
            await events.publish(quick, "deliver", device_ids=[alice.device_id])
            assert (await next_of(a, ReceiptNotice)).kind == ReceiptKind.DELIVERED
            await events.publish(slow, "deliver", device_ids=[alice.device_id])
            await tx.commit()
            assert (await next_of(a, ReceiptNotice)).kind == ReceiptKind.READ
        finally:
            await slow.close()
            await quick.close()


async def test_offline_device_gets_its_backlog_in_order_in_pages_then_queue_empty(
        db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, ws_send_window=2) as world:
        alice, bob = await peer(world, "alice"), await peer(world, "bob")
        tid = await thread(world, alice, bob)
        a = await connect(world, alice)
        sent = [seal(alice, tid, [bob], f"m{i}".encode()) for i in range(5)]
        for s in sent:
            await a.send(s)
        b = await connect(world, bob)
        got: list[str] = []
        try:
            while True:
                frame = await b.next_event(seconds(10))
                if isinstance(frame, Deliver):
                    got.append(frame.message.header.message_id)
                    await b.ack([frame.delivery_id])
                elif isinstance(frame, QueueEmpty):
                    break
        finally:
            await a.close()
            await b.close()
        assert got == [s.header.message_id for s in sent]


async def test_unacknowledged_deliveries_are_redelivered_after_reconnect(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    a = await connect(world, alice)
    s = seal(alice, tid, [bob])
    await a.send(s)
    b = await connect(world, bob)
    first = await next_of(b, Deliver)
    await b.close()  # stored nothing, acknowledged nothing
    b = await connect(world, bob)
    again = await next_of(b, Deliver)
    await a.close()
    await b.close()
    assert again.message.header.message_id == first.message.header.message_id


async def test_retry_with_same_bytes_returns_the_original_acceptance(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice) as (a,):
        s = seal(alice, tid, [bob])
        first = await a.send(s)
        again = await a.send(s)
        assert again.duplicate and again.thread_seq == first.thread_seq


async def lock_waits(conn: asyncpg.Connection) -> int:
    """How many other backends wait for a lock, asked from inside ``conn``'s open transaction.
    Postgres reads the activity of all backends once per transaction and answers every later
    question of that transaction from the same snapshot, so it is discarded first
    (``pg_stat_clear_snapshot``, PostgreSQL manual, "The Cumulative Statistics System"):
    otherwise a first question asked before the send reached the lock would be answered
    "none" for as long as the transaction lasts."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid()"))


async def test_a_sender_gone_while_its_batch_waited_does_not_fail_the_others_in_it(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    """Group commit: alice's and bob's sends wait in one batch behind a send held on a row
    lock; alice's connection closes meanwhile. Bob is still answered ``accepted``, both are
    stored once, and alice's resend of the same bytes is answered as a duplicate."""
    alice, bob, carol = trio
    held = await thread(world, carol, alice)
    t_alice, t_bob = await thread(world, alice, carol), await thread(world, bob, carol)
    c, a, b = await connect(world, carol), await connect(world, alice), await connect(world, bob)
    conn = await world.db()
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE",
                           uuid.UUID(held))
        blocker = asyncio.create_task(c.send(seal(carol, held, [alice])))
        await eventually(lambda: lock_waits(conn), timeout=20)  # the blocked send waits
        from_alice, from_bob = seal(alice, t_alice, [carol]), seal(bob, t_bob, [carol])
        gone = asyncio.create_task(a.send(from_alice))
        answer = asyncio.create_task(b.send(from_bob))
        for sock in (a, b):  # a pong after the send: the relay has queued the send
            await sock.send_frame(Ping(nonce=b"q"))
            await next_of(sock, Pong)
        await a.close()
        with pytest.raises(SocketClosed):
            await gone
    finally:
        await tx.rollback()
        await conn.close()
    try:
        await blocker
        accepted = await answer
        assert not accepted.duplicate
        a = await connect(world, alice)
        again = await a.send(from_alice)
        assert again.duplicate
    finally:
        for sock in (a, b, c):
            await sock.close()


async def test_reused_message_id_with_other_bytes_is_refused_and_overwrites_nothing(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice, bob) as (a, b):
        s = seal(alice, tid, [bob], b"original")
        await a.send(s)
        forgery = seal(alice, tid, [bob], b"forgery", message_id=s.header.message_id)
        assert (await refused_send(a, forgery)).code == "duplicate_conflict"
        d = await next_of(b, Deliver)
        assert opened(bob, alice, d.message) == b"original"
        assert (await a.send(seal(alice, tid, [bob]))).thread_seq == 2  # still usable


async def test_send_to_a_thread_the_device_is_not_in_is_refused(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, carol) as (c,):
        assert (await refused_send(c, seal(carol, tid, [alice, bob]))).code == \
            "not_thread_member"
        assert (await refused_send(c, seal(carol, str(uuid.uuid4()), [alice]))).code == \
            "thread_not_found"


async def test_forged_sender_device_is_refused(world: World,
                                               trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = trio
    tid = await thread(world, alice, bob, carol)
    async with sockets(world, carol) as (c,):
        # Sealed as alice, sent on carol's socket.
        assert (await refused_send(c, seal(alice, tid, [bob]))).code == "sender_mismatch"


async def test_tampered_ciphertext_fails_the_sender_signature(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice) as (a,):
        s = seal(alice, tid, [bob])
        bad = msgspec.structs.replace(s, ciphertext=bytes([s.ciphertext[0] ^ 1]) + s.ciphertext[1:])
        assert (await refused_send(a, bad)).code == "sender_mismatch"


async def test_missing_extra_and_stale_devices_are_listed_and_nothing_is_stored(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice) as (a,):
        err = await refused_send(a, seal(alice, tid, [carol]))
        assert err.code == "device_set_mismatch"
        assert (err.missing, err.extra) == ([bob.device_id], [carol.device_id])
        r = await world.revoke(world.org, 1, devices=(bob.device_id,))
        assert r.status_code == 200, r.text
        assert (await refused_send(a, seal(alice, tid, [bob]))).stale == [bob.device_id]
        assert await count(world, "SELECT count(*) FROM messages") == 0


async def test_acknowledging_another_devices_delivery_is_refused_and_changes_nothing(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = trio
    tid = await thread(world, alice, bob, carol)
    async with sockets(world, *trio) as (a, b, c):
        await a.send(seal(alice, tid, [bob, carol]))
        d = await next_of(b, Deliver)
        await c.send_frame(Ack(delivery_ids=[d.delivery_id]))
        err = await next_of(c, Error)
        assert err.code.value == "delivery_not_found"
        assert await count(world, "SELECT count(*) FROM deliveries WHERE delivery_id = $1",
                           d.delivery_id) == 1


# --- bad input on a ready connection ----------------------------------------------------------


async def ready_raw(world: World, p: Peer) -> websockets.asyncio.client.ClientConnection:
    """A raw websocket taken through the handshake, for sending arbitrary bytes."""
    sock = await connect(world, p)
    return sock._ws  # the reader task is replaced below by direct reads


async def test_garbage_truncated_and_unknown_frames_get_errors_and_the_socket_stays_usable(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice) as (a,):
        await next_of(a, QueueEmpty)
        good = encode_frame(Ping(nonce=b"abcdefgh"))
        for data, code in [
            (os.urandom(64), "malformed_frame"),
            (good[: len(good) // 2], "malformed_frame"),
            (msgspec.msgpack.encode({"t": "teleport", "to": "mars"}), "unknown_frame_type"),
            (msgspec.msgpack.encode({"t": "ack", "delivery_ids": ["x"], "extra": 1}),
             "malformed_frame"),
            (encode_frame(QueueEmpty(pending=0, server_time=0)), "unexpected_frame"),
            (msgspec.msgpack.encode({"t": "send", "req_id": "r1", "message": 7}),
             "malformed_frame"),
        ]:
            await a._ws.send(data)
            err = await next_of(a, Error)
            assert err.code.value == code, data
            assert not err.fatal
        acc = await a.send(seal(alice, tid, [bob]))
        assert acc.thread_seq == 1


async def test_oversize_frame_closes_with_1009(world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    a = await connect(world, trio[0])
    await a._ws.send(b"\x00" * (world.relay.relay.settings.ws_max_frame + 1))
    assert await close_code(a) == CloseCode.MESSAGE_TOO_BIG


async def test_flood_past_the_rate_limit_gets_retry_after_and_the_socket_stays_open(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, alice) as (a,):
        limit = world.relay.relay.settings.rate_messages_per_minute
        window = a.ready.limits.send_window if a.ready else 1
        results: list[object] = []
        started = time.monotonic()
        while len(results) < limit + window:  # bursts that fill the send window each time
            results += await asyncio.gather(*(a.send(seal(alice, tid, [bob]))
                                              for _ in range(window)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, SendRefused)]
        accepted = [r for r in results if not isinstance(r, BaseException)]
        assert refused and all(r.code == "rate_limited" and r.retry_after for r in refused)
        # a bucket of `limit` tokens that refills at limit/60 per second while we flood
        refill = (time.monotonic() - started) * limit / 60
        assert len(accepted) <= limit + refill + 1
        assert len(accepted) + len(refused) == len(results)
        # The buckets run on the relay's clock: move it past the longest wait it asked for.
        world.clock.advance(max(r.retry_after or 0 for r in refused))
        assert (await a.send(seal(alice, tid, [bob]))).thread_seq == len(accepted) + 1


# --- sessions -------------------------------------------------------------------------------


async def test_second_connection_of_a_device_replaces_the_first_with_4003(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    async with sockets(world, trio[0], trio[0]) as (first, second):
        assert await close_code(first) == CloseCode.SESSION_REPLACED
        assert not second.closed.done()


async def _registered_at(world: World, sock: RelaySocket) -> int:
    """The time the relay recorded for ``sock``'s registration (Postgres's clock, µs), once
    it has registered (just after its ``ready``)."""
    ready = sock.ready
    assert ready is not None

    async def registered() -> int:
        m = world.relay.relay.hub.member(ready.device_id)
        return m.registered_at if m is not None and m.session_id == ready.session_id else 0
    return await eventually(registered)


async def test_a_late_event_of_the_connection_a_device_replaced_leaves_its_new_one_open(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    """A device that reconnects at once keeps its new connection when the ``session`` event
    of the old one reaches a relay process late (server/hub.py): here another process's event
    for an older registration, sent through Postgres as a process would send it."""
    alice = trio[0]
    async with sockets(world, alice) as (sock,):
        at = await _registered_at(world, sock)
        conn: asyncpg.Connection = await world.db()
        try:
            async with conn.transaction():
                await events.publish(conn, "session", device_id=alice.device_id,
                                     session_id=str(uuid.uuid4()), registered_at=at - 1,
                                     origin="another-process")
                # Handled after the session event: reaches the socket only if it is still
                # the device's registered connection.
                await events.publish(conn, "keys_low", target=4242,
                                     devices=[{"device_id": alice.device_id, "remaining": 1}])
            while (await next_of(sock, KeysLow)).target != 4242:
                pass  # the relay's own at connect (the peer's stock of one-time keys is low)
            assert not sock.closed.done()
            await events.publish(conn, "session", device_id=alice.device_id,
                                 session_id=str(uuid.uuid4()), registered_at=at + 1,
                                 origin="another-process")
            assert await close_code(sock) == CloseCode.SESSION_REPLACED
        finally:
            await conn.close()


async def test_a_connection_to_another_relay_process_replaces_the_one_here_and_stays(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice = trio[0]
    async with sockets(world, alice) as (first,), \
            running_relay(world.dsn, world.relay.relay.settings) as other:
        second = await RelaySocket.connect(other.ws_url + "/v1/ws", access_token=alice.token,
                                           device_id=alice.device_id, sign=alice.device.keys.sign)
        try:
            assert await close_code(first) == CloseCode.SESSION_REPLACED
            # and the first connection's own event, long delivered, did not close it
            bob = trio[1]
            async with sockets(world, bob) as (b,):
                tid = await thread(world, bob, alice)
                await b.send(seal(bob, tid, [alice], b"still here"))
            delivered = await next_of(second, Deliver)
            assert opened(alice, bob, delivered.message) == b"still here"
            assert not second.closed.done()
        finally:
            await second.close()


async def test_revoking_a_device_closes_its_socket_with_4004_and_it_cannot_reconnect(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    bob = trio[1]
    assert await closed_by_list(world, bob, devices=(bob.device_id,)) == CloseCode.DEVICE_REVOKED
    assert await refused_at_handshake(world, bob) == (CloseCode.DEVICE_REVOKED,
                                                      "device_revoked")


async def test_suspending_a_user_closes_their_sockets_with_4005(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    carol = trio[2]
    assert await closed_by_list(world, carol, users=(carol.user_id,)) == CloseCode.USER_SUSPENDED


async def test_relay_shutdown_closes_sockets_with_1001(db_dsn: str, tmp_path: Path) -> None:
    async with alone(db_dsn, tmp_path, "alice") as (world, sock):
        await asyncio.to_thread(lambda: setattr(world.relay.server, "should_exit", True))
        assert await close_code(sock) == CloseCode.GOING_AWAY


async def test_a_thousand_abrupt_connections_leave_other_users_unharmed(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio
    tid = await thread(world, alice, bob)
    a, b = await connect(world, alice), await connect(world, bob)
    host, port = world.relay.base_url.removeprefix("http://").split(":")

    async def abrupt(i: int) -> None:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            if i % 2:  # half get as far as the websocket upgrade
                writer.write(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                await writer.drain()
            writer.transport.abort()
        except OSError:
            pass

    async def exchange() -> int:
        n = 0
        for _ in range(20):
            await a.send(seal(alice, tid, [bob]))
            d = await next_of(b, Deliver)
            await b.ack([d.delivery_id])
            n += 1
        return n

    try:
        sem = asyncio.Semaphore(100)

        async def bounded(i: int) -> None:
            async with sem:
                await abrupt(i)

        flood = asyncio.gather(*(bounded(i) for i in range(1000)))
        delivered = await exchange()
        await flood
        assert delivered == 20
        assert (await a.send(seal(alice, tid, [bob]))).thread_seq == 21
    finally:
        await a.close()
        await b.close()


async def test_metrics_report_connections_messages_latency_and_rejections(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, carol = trio
    tid = await thread(world, alice, bob)
    async with sockets(world, *trio) as (a, b, c):
        await a.send(seal(alice, tid, [bob]))
        d = await next_of(b, Deliver)
        await b.ack([d.delivery_id])
        with pytest.raises(SendRefused):
            await c.send(seal(carol, tid, [alice, bob]))

        async def metrics_after_the_ack() -> str:
            # An ack has no answer frame: the delivered counter moves once the relay took it.
            text = (await world.http.get("/metrics")).text
            return text if "lightbox_messages_delivered_total 1.0" in text else ""

        text = await eventually(metrics_after_the_ack)
    assert "lightbox_ws_connections 3.0" in text
    assert "lightbox_messages_accepted_total 1.0" in text
    assert "lightbox_messages_delivered_total 1.0" in text
    assert "lightbox_delivery_latency_seconds_count 1.0" in text
    assert 'lightbox_ws_rejections_total{code="not_thread_member"} 1.0' in text
    assert "lightbox_queue_depth" in text


async def test_device_low_on_prekeys_is_told_on_connect_and_after_a_claim(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    alice, bob, _ = trio  # enrolled with 5 one-time prekeys, below the low-water mark
    async with sockets(world, bob) as (b,):
        low = await next_of(b, KeysLow)
        assert (low.remaining, low.target) == (5, world.relay.relay.settings.prekeys_target)
        r = await world.call(alice.device, "POST", "/v1/keys/claim",
                             json={"devices": [bob.device_id]})
        assert r.status_code == 200, r.text
        low = await next_of(b, KeysLow)
        assert low.remaining == 4


async def test_a_connect_is_recorded_by_the_relays_clock_not_the_databases(
        world: World, trio: tuple[Peer, Peer, Peer]) -> None:
    _, bob, _ = trio
    world.clock.advance(300)
    async with sockets(world, bob) as (b,):
        await next_of(b, KeysLow)  # pushed once the connect is recorded
        conn = await world.db()
        try:
            seen = await conn.fetchval(
                "SELECT extract(epoch FROM last_seen_at) FROM devices WHERE device_id = $1",
                uuid.UUID(bob.device_id))
        finally:
            await conn.close()
    assert float(seen) >= time.time() + 250


async def test_open_socket_closes_with_4005_when_the_licence_expires(
        db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, ws_heartbeat=1) as world:
        user = world.org.user("expiring", licence_expires_at=int(time.time()) + 3)
        (result,) = await world.provision(user)
        assert result["ok"], result
        p = await peer(world, "expiring", user=user)
        sock = await connect(world, p)
        code, reason = await asyncio.wait_for(sock.closed, seconds(15))
    assert (code, reason) == (CloseCode.USER_SUSPENDED, "licence_expired")


async def test_silent_device_is_pinged_and_closed_with_4010_without_pong(
        db_dsn: str, tmp_path: Path) -> None:
    async with alone(db_dsn, tmp_path, "quiet", ws_heartbeat=1,
                     ws_heartbeat_timeout=0.5) as (_, sock):
        sock._session._queue = lambda frame: None  # type: ignore[method-assign]  # never pong
        assert await close_code(sock) == CloseCode.HEARTBEAT_TIMEOUT


async def test_idle_device_is_closed_with_4007(db_dsn: str, tmp_path: Path) -> None:
    async with alone(db_dsn, tmp_path, "idle", ws_heartbeat=1,
                     ws_idle_timeout=1.5) as (_, sock):
        assert await close_code(sock) == CloseCode.IDLE_TIMEOUT
