"""Queues on the relay (server/store/messages.py) on a real database: a device acknowledges
only its own deliveries, durable notices are kept once per key, read in order after a cursor,
and dropped after sending only when they are not orders, and ciphertext is kept until every
device acknowledged it."""

from __future__ import annotations

import uuid

import asyncpg

from server.store import messages, threads
from tests.server.test_store_threads import NOW, add_device, add_user, new_message, store


async def test_a_device_acknowledges_only_its_own_deliveries(conn: asyncpg.Connection) -> None:
    a, b, c = [await add_user(conn) for _ in range(3)]
    a1, b1, c1 = [await add_device(conn, u) for u in (a, b, c)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b, c], roles=[], now=NOW)
    msg = new_message(tid, a, a1, [b1, c1])
    await store(conn, msg)
    (for_b,) = await messages.fetch_deliveries(conn, b1, sent=[], limit=10)
    (for_c,) = await messages.fetch_deliveries(conn, c1, sent=[], limit=10)
    assert await messages.ack(conn, c1, [for_b.delivery_id]) == []  # not c's
    assert await messages.queue_depth(conn, b1) == 1
    assert await messages.ack(conn, b1, [for_b.delivery_id]) == [
        (for_b.delivery_id, msg.message_id, a1)]
    assert await messages.ack(conn, b1, [for_b.delivery_id]) == []  # twice: nothing more
    kept = "SELECT sealed IS NOT NULL FROM messages WHERE message_id = $1"
    assert await conn.fetchval(kept, uuid.UUID(msg.message_id))  # c has not acknowledged it
    await messages.ack(conn, c1, [for_c.delivery_id])
    assert not await conn.fetchval(kept, uuid.UUID(msg.message_id))  # with c's acknowledgement
    ref = await messages.message_ref(conn, tid, msg.message_id)
    assert ref is not None and ref.recipients == frozenset({b1, c1})
    assert await messages.message_ref(conn, tid, str(uuid.uuid4())) is None


async def test_notices_are_kept_once_per_key_and_orders_outlive_their_sending(
        conn: asyncpg.Connection) -> None:
    d1 = await add_device(conn, await add_user(conn))
    d2 = await add_device(conn, await add_user(conn))
    await messages.add_notices(conn, [d1, d2], "receipt", b"r1", now=NOW)
    await messages.add_notices(conn, [d1], "expire_order", b"o1", dedupe_key="expire:o1",
                               now=NOW)
    await messages.add_notices(conn, [d1], "expire_order", b"o1 again", dedupe_key="expire:o1",
                               now=NOW)
    await messages.add_notices(conn, [d1], "filed", b"f1", now=NOW)
    got = await messages.fetch_notices(conn, d1, limit=10)
    assert [n.frame for n in got] == [b"r1", b"o1", b"f1"]
    assert [n.kept for n in got] == [False, True, False]
    assert [n.frame for n in await messages.fetch_notices(
        conn, d1, skip=[got[0].notice_pk], limit=1)] == [b"o1"]
    await messages.drop_notices(conn, d1, [n.notice_pk for n in got])
    left = await messages.fetch_notices(conn, d1, limit=10)
    assert [n.frame for n in left] == [b"o1"]  # the order stays until confirmed
    assert await messages.fetch_notices(conn, d1, skip=[left[0].notice_pk], limit=10) == []
    assert [n.frame for n in await messages.fetch_notices(conn, d2, limit=10)] == [
        b"r1"]
