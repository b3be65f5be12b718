"""Delivery reads for many devices at once (server/reads.py, server/store/messages.py).

The pumps that ask in the same event-loop turn are answered by one query, and each device gets
exactly what a read of its own would have returned: its own deliveries, in queue order, within
its own limit, without the ids already in flight on its connection."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from server.db import Database
from server.reads import DeliveryReader
from server.store import messages, threads
from tests.helpers import query_loggers_called
from tests.server.test_store_threads import NOW, add_device, add_user, new_message, store


async def _two_recipients(conn: asyncpg.Connection, count: int) -> tuple[str, str]:
    """A thread where a sends ``count`` messages to b's and c's devices; (b1, c1)."""
    a, b, c = [await add_user(conn) for _ in range(3)]
    a1, b1, c1 = [await add_device(conn, u) for u in (a, b, c)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b, c], roles=[], now=NOW)
    for i in range(count):
        await store(conn, new_message(tid, a, a1, [b1, c1], body=bytes([i])))
    return b1, c1


def _ids(deliveries: list[messages.Delivery]) -> list[tuple[str, int]]:
    return [(d.delivery_id, d.thread_seq) for d in deliveries]


async def test_one_read_for_several_devices_equals_a_read_for_each(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        b1, c1 = await _two_recipients(conn, 5)
        (first_b,) = await messages.fetch_deliveries(conn, b1, sent=[], limit=1)
        requests = [messages.DeliveryRequest(b1, [first_b.delivery_id], 3),
                    messages.DeliveryRequest(c1, [], 10),
                    messages.DeliveryRequest(str(uuid.uuid4()), [], 10)]  # nothing queued
        together = await messages.fetch_next_deliveries(conn, requests)
        alone = [await messages.fetch_deliveries(conn, r.device_id, sent=r.sent, limit=r.limit)
                 for r in requests]
        assert [_ids(x) for x in together] == [_ids(x) for x in alone]
        assert [d.thread_seq for d in together[0]] == [2, 3, 4]  # in flight left out, limit 3
        assert [d.thread_seq for d in together[1]] == [1, 2, 3, 4, 5]
        assert together[2] == []
        assert {d.delivery_id for d in together[0]}.isdisjoint(
            {d.delivery_id for d in together[1]})
    finally:
        await conn.close()


async def test_ids_in_flight_are_left_out_for_their_own_device_only(db_dsn: str) -> None:
    """Several devices with deliveries in flight, read together: each loses exactly its own
    in-flight ids, whatever the others have in flight."""
    conn = await asyncpg.connect(db_dsn)
    try:
        b1, c1 = await _two_recipients(conn, 6)
        all_b = await messages.fetch_deliveries(conn, b1, sent=[], limit=10)
        all_c = await messages.fetch_deliveries(conn, c1, sent=[], limit=10)
        requests = [messages.DeliveryRequest(b1, [all_b[0].delivery_id, all_b[3].delivery_id],
                                             10),
                    messages.DeliveryRequest(c1, [d.delivery_id for d in all_c[1:5]], 10)]
        got_b, got_c = await messages.fetch_next_deliveries(conn, requests)
        assert [d.thread_seq for d in got_b] == [2, 3, 5, 6]
        assert [d.thread_seq for d in got_c] == [1, 6]
        # One device's in-flight ids named under another device leave nothing out.
        crossed = [messages.DeliveryRequest(b1, [d.delivery_id for d in all_c], 10)]
        (got,) = await messages.fetch_next_deliveries(conn, crossed)
        assert [d.thread_seq for d in got] == [1, 2, 3, 4, 5, 6]
    finally:
        await conn.close()


async def test_pumps_asking_in_the_same_turn_share_one_query(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        b1, c1 = await _two_recipients(conn, 2)
    finally:
        await conn.close()
    db = Database(db_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        reader = DeliveryReader(db)
        # A first read, so that asyncpg's one-off type introspection is not counted below.
        assert await reader.next_deliveries(str(uuid.uuid4()), sent=[b1], limit=1) == []
        queries: list[str] = []
        async with db.hot_pool.acquire() as pooled:  # the one its reads have used so far
            pooled.add_query_logger(lambda q: queries.append(q.query))
        got_b, got_c = await asyncio.gather(reader.next_deliveries(b1, sent=[], limit=10),
                                            reader.next_deliveries(c1, sent=[], limit=10))
        await query_loggers_called()
        assert len(queries) == 1
        assert [d.thread_seq for d in got_b] == [d.thread_seq for d in got_c] == [1, 2]
        # A later turn is a later query.
        later = await reader.next_deliveries(b1, sent=[got_b[0].delivery_id], limit=10)
        await query_loggers_called()
        assert [d.thread_seq for d in later] == [2]
        assert len(queries) == 2
    finally:
        await db.close()


async def test_a_failed_read_fails_every_pump_that_shared_it(db_dsn: str) -> None:
    db = Database(db_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        reader = DeliveryReader(db)
        bad = messages.DeliveryRequest("not-a-uuid", [], 1)
        results = await asyncio.gather(
            reader.next_deliveries(bad.device_id, sent=[], limit=1),
            reader.next_deliveries(str(uuid.uuid4()), sent=[], limit=1),
            return_exceptions=True)
        assert all(isinstance(r, asyncpg.DataError) for r in results), results
        assert await reader.next_deliveries(str(uuid.uuid4()), sent=[], limit=1) == []
    finally:
        await db.close()


