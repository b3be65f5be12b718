"""The message path's plans do not depend on the tables' sizes (server/db.py).

The hot pool plans each statement once, generically, and keeps the plan for the connection's
life. A plan made while ``deliveries`` (a queue, often empty) or ``threads`` was small read
them sequentially, and kept doing so as they grew: every read walked every queued and dead
row (docs/BENCHMARKS.md, round 12). These tests plan on a database whose statistics say it is
empty, as a relay started on a quiet database does, and check what the plans read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.db import Database
from server.store import batches, messages, threads
from tests.server.test_store_threads import NOW, add_device, add_user, new_message

TABLES = ("deliveries", "messages", "threads", "thread_members", "devices")


@pytest.fixture
async def hot(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the relay's hot pool, on a database analysed while empty."""
    plain = await asyncpg.connect(db_dsn)
    try:
        await plain.execute("ANALYZE")
    finally:
        await plain.close()
    db = Database(db_dsn)
    await db.open()
    try:
        async with db.hot_pool.acquire() as conn:
            yield conn
    finally:
        await db.close()


async def generic_plan(conn: asyncpg.Connection, statement: str, arguments: str) -> str:
    """The plan the hot pool keeps for ``statement`` (a prepared statement's generic plan, as
    asyncpg prepares it), shown for ``arguments`` (SQL literals)."""
    await conn.execute("DEALLOCATE ALL")
    await conn.execute(f"PREPARE planned AS {statement}")
    return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE planned({arguments})"))


async def plan_of_the_read(conn: asyncpg.Connection) -> str:
    return await generic_plan(conn, messages._NEXT_DELIVERIES,
                              f"'{{{uuid.uuid4()}}}', '{{16}}', '{{}}', '{{}}'")


async def read_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Per table of the message path, so far, this connection's own included: its sequential
    scans (``seq <table>``) and the index entries its index scans returned (``idx <table>``)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once it is idle
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT t.relname, t.seq_scan, (SELECT coalesce(sum(i.idx_tup_read), 0) "
        "FROM pg_stat_user_indexes i WHERE i.relid = t.relid) AS idx "
        "FROM pg_stat_user_tables t WHERE t.relname = ANY($1::text[])", list(TABLES))
    return {f"{kind} {r['relname']}": int(r[column]) for r in rows
            for kind, column in (("seq", "seq_scan"), ("idx", "idx"))}


async def thread_with_queue(conn: asyncpg.Connection, sender: tuple[str, str],
                            to: tuple[str, str], count: int) -> str:
    """A thread from ``sender`` (user, device) to ``to`` holding ``count`` messages stored
    (committed) for ``to``'s device, all still queued; its id."""
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=sender[0],
                                priority="routine", users=[to[0]], roles=[], now=NOW)
    if count:
        async with conn.transaction():
            await batches.lock_and_read(conn, [tid], [], NOW)
            await batches.store_messages(conn, [new_message(tid, *sender, [to[1]])
                                                for _ in range(count)],
                                         NOW, channel="test_plans", notifications=[])
    return tid


async def people(conn: asyncpg.Connection, n: int) -> list[tuple[str, str]]:
    """``n`` users with a device each: (user, device)."""
    users = [await add_user(conn) for _ in range(n)]
    return [(u, await add_device(conn, u)) for u in users]


async def test_the_delivery_read_looks_deliveries_and_messages_up_by_their_indexes(
        hot: asyncpg.Connection) -> None:
    plan = await plan_of_the_read(hot)
    assert "Seq Scan" not in plan, plan
    assert "Index Scan using deliveries_device_queue on deliveries" in plan, plan
    assert "Index Scan using messages_pkey on messages" in plan, plan


async def test_the_read_leaves_out_what_is_in_flight_through_one_hash_table(
        hot: asyncpg.Connection) -> None:
    """The ids already written on the devices' connections (``sent``) are put in one hash table
    per read, not walked for each delivery the read looks at: walked, a read of 50 devices with
    12 each in flight compared every delivery with all 600 (docs/BENCHMARKS.md, round 24)."""
    plan = await plan_of_the_read(hot)
    assert "NOT (hashed SubPlan" in plan, plan


async def test_the_read_keeps_that_plan_once_the_tables_have_grown(
        hot: asyncpg.Connection, db_dsn: str) -> None:
    plain = await asyncpg.connect(db_dsn)
    try:
        a, b = await people(plain, 2)
        await thread_with_queue(plain, a, b, 300)
        await plain.execute("ANALYZE")
    finally:
        await plain.close()
    plan = await plan_of_the_read(hot)
    assert "Seq Scan" not in plan, plan
    assert "deliveries_device_queue" in plan and "messages_pkey" in plan, plan


async def test_the_acknowledgement_looks_each_delivery_up_by_its_key(
        hot: asyncpg.Connection) -> None:
    """The statement inside ``ack_deliveries`` (alembic migration 0019), planned as the hot
    pool plans it, on tables analysed while empty."""
    body = await hot.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'ack_deliveries'")
    delete = body[body.index("DELETE"):body.index("RETURNING")]
    typed = "$1::uuid[]", "$2::uuid[]"
    plan = await generic_plan(
        hot, delete.replace("p_devices", typed[0]).replace("p_deliveries", typed[1]),
        f"'{{{uuid.uuid4()}}}', '{{{uuid.uuid4()}}}'")
    assert "Seq Scan on deliveries" not in plan, plan
    assert "Index Scan using deliveries_pkey on deliveries" in plan, plan
    assert "Index Cond: (delivery_id = ANY ($2))" in plan, plan


async def test_storing_reading_and_acknowledging_read_only_the_rows_they_need(
        hot: asyncpg.Connection, db_dsn: str) -> None:
    """The whole path on the hot connection, its plans made while the tables were nearly
    empty: lock and read the thread, store a batch, read the device's deliveries, store a
    batch to the known thread, acknowledge. Another device has 200 deliveries queued
    meanwhile: no table is scanned sequentially, and no index is walked past the rows the
    path looks up (a walk would read those 200 entries, or more)."""
    plain = await asyncpg.connect(db_dsn)
    try:
        (a, a1), (b, b1), c = await people(plain, 3)
        tid = await thread_with_queue(plain, (a, a1), (b, b1), 0)
        await thread_with_queue(plain, (a, a1), c, 200)
    finally:
        await plain.close()
    before = await read_counts(hot)
    async with hot.transaction():
        reads = await batches.lock_and_read(hot, [tid], [], NOW)
        await batches.store_messages(hot, [new_message(tid, a, a1, [b1]) for _ in range(3)],
                                     NOW, channel="test_plans", notifications=[])
    (first,) = await messages.fetch_next_deliveries(
        hot, [messages.DeliveryRequest(b1, [], 16)])
    assert len(first) == 3
    result = await batches.lock_and_store(hot, reads.digests, reads.epoch, NOW,
                                          [new_message(tid, a, a1, [b1])], NOW,
                                          channel="test_plans", notifications=[],
                                          local=[b1])
    assert result is not None
    (queued,) = await messages.fetch_next_deliveries(
        hot, [messages.DeliveryRequest(b1, [d.delivery_id for d in first], 16)])
    assert len(queued) == 1
    acked = await messages.ack(hot, b1, [d.delivery_id for d in first + queued])
    assert len(acked) == 4
    after = await read_counts(hot)
    used = {k: after[k] - before[k] for k in after}
    assert {k: n for k, n in used.items() if k.startswith("seq ")} == {
        f"seq {t}": 0 for t in TABLES}
    assert max(n for k, n in used.items() if k.startswith("idx ")) < 100, used


async def test_the_purge_looks_each_message_up_in_the_queue_whatever_the_statistics(
        db_dsn: str) -> None:
    """The ciphertext purge asks, for each message whose ciphertext is still kept, whether a
    delivery of it is queued: by ``deliveries_message``, never by reading the queue whole, dead
    rows included, though the statistics say the queue is empty (plans made from them read it
    whole for every chunk: 615 rows a message by a sequential scan, then 265 index entries with
    sequential scans off, in closed loops of ``make bench``). Both ways: the sweep
    (server/purge.py) over what a relay before alembic migration 0021 kept, and the trigger of
    that migration as acknowledgements remove deliveries."""
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("ANALYZE")
        sender = await add_user(conn)
        sender_device = await add_device(conn, sender)
        for _ in range(4):
            to = await add_user(conn)
            await thread_with_queue(conn, (sender, sender_device),
                                    (to, await add_device(conn, to)), 500)
        assert await messages.purge_delivered_ciphertext(conn, chunk=100) == 0  # marks 2,000
        # Acknowledged but for one in twenty, by a relay without the trigger: dead rows, as a
        # queue in service has, and ciphertext kept for nothing.
        await conn.execute("ALTER TABLE deliveries DISABLE TRIGGER deliveries_purge")
        await conn.execute("DELETE FROM deliveries WHERE delivery_pk % 20 BETWEEN 1 AND 9")
        await conn.execute("ALTER TABLE deliveries ENABLE TRIGGER deliveries_purge")
        left = [(r[0], r[1]) for r in await conn.fetch(
            "SELECT device_id, delivery_id FROM deliveries WHERE delivery_pk % 20 <> 0 "
            "ORDER BY delivery_pk")]
        before = await read_counts(conn)
        assert await messages.purge_delivered_ciphertext(conn, chunk=100) == 900
        swept = await read_counts(conn)
        # The rest acknowledged as the relay does (server/acks.py): in batches, as a busy
        # relay makes them, and one at a time, as in a quiet hour. A batch's own plan may read
        # the queue whole on this plain connection (statistics of an empty queue; the relay's
        # hot pool plans with sequential scans off, server/db.py): the trigger must add no
        # such read.
        ack = "SELECT count(*) FROM ack_deliveries($1::uuid[], $2::uuid[])"

        async def scans(batch: list[tuple[str, str]]) -> tuple[int, int]:
            ahead = await read_counts(conn)
            assert await conn.fetchval(ack, *map(list, zip(*batch, strict=True))) == len(batch)
            done = await read_counts(conn)
            return (done["seq deliveries"] - ahead["seq deliveries"],
                    done["seq messages"] - ahead["seq messages"])
        await conn.execute("ALTER TABLE deliveries DISABLE TRIGGER deliveries_purge")
        without = await scans(left[:250])
        await conn.execute("ALTER TABLE deliveries ENABLE TRIGGER deliveries_purge")
        batched = await scans(left[250:500])
        ahead = await read_counts(conn)
        for one in left[500:]:
            assert await scans([one]) == (0, 0)
        acked = await read_counts(conn)
        # 100 never acknowledged, 250 acknowledged with the trigger off after the sweep passed.
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE sealed IS NOT NULL") \
            == 350
    finally:
        await conn.close()
    assert swept["seq deliveries"] == before["seq deliveries"]
    assert batched == without
    # One lookup a message, each finding its own delivery's entry (dead or not): about 2,000
    # in all, where reading the index whole for each of the 20 chunks reads 40,000.
    assert 0 < swept["idx deliveries"] - before["idx deliveries"] <= 3 * 2000
    # 500 acknowledgements one at a time: a few entries each, not the queue each time.
    assert 0 < acked["idx deliveries"] - ahead["idx deliveries"] <= 10 * 500
    # Each the last of its message: the purge reads the message once, by its key, to purge
    # it, and not again (alembic migration 0024: nothing is left to look at twice).
    assert acked["idx messages"] - ahead["idx messages"] == 500
