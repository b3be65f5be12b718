"""Acknowledgements with group commit (server/acks.py) on a real database: acks from many
connections go out in one statement yet each caller hears only of its own deliveries removed,
a device never removes another device's delivery, an id already gone is not reported, a
batch that fails fails its callers without stopping the pipeline, acknowledgements that come
within the linger share a statement, and stopping removes what is queued."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.acks import AckPipeline
from server.db import Database
from server.store import messages
from tests.server.test_reads import _two_recipients


@contextlib.asynccontextmanager
async def running(db_dsn: str, *, linger: float = 0.0) -> AsyncIterator[AckPipeline]:
    db = Database(db_dsn, min_size=1, max_size=2)
    await db.open()
    acks = AckPipeline(db, max_batch=4, linger=linger)
    await acks.start()
    try:
        yield acks
    finally:
        await acks.stop()
        await db.close()


@pytest.fixture
async def pipeline(db_dsn: str) -> AsyncIterator[AckPipeline]:
    async with running(db_dsn) as acks:
        yield acks


@pytest.fixture
async def lingering(db_dsn: str) -> AsyncIterator[AckPipeline]:
    """A pipeline whose linger outlasts any test: only a full batch or ``stop()`` flushes."""
    async with running(db_dsn, linger=3600.0) as acks:
        yield acks


async def deliveries(conn: asyncpg.Connection, count: int = 1
                     ) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    """Two recipients' devices, each with ``count`` deliveries waiting: ``(device, ids)``."""
    b1, c1 = await _two_recipients(conn, count)
    waiting = [await messages.fetch_deliveries(conn, d, sent=[], limit=100) for d in (b1, c1)]
    return ((b1, [x.delivery_id for x in waiting[0]]), (c1, [x.delivery_id for x in waiting[1]]))


async def test_an_ack_removes_the_devices_deliveries_and_says_which(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, for_b), (c1, _) = await deliveries(conn, 2)
    assert await pipeline.submit(b1, for_b) == set(for_b)
    assert await messages.queue_depth(conn, b1) == 0
    assert await messages.queue_depth(conn, c1) == 2


async def test_a_device_never_removes_another_devices_delivery(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, _), (c1, for_c) = await deliveries(conn)
    assert await pipeline.submit(b1, for_c) == set()
    assert await messages.queue_depth(conn, c1) == 1


async def test_an_id_already_removed_is_not_reported_again(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, for_b), _ = await deliveries(conn)
    await pipeline.submit(b1, for_b)
    assert await pipeline.submit(b1, for_b) == set()
    assert await pipeline.submit(b1, [str(uuid.uuid4())]) == set()


async def test_concurrent_acks_each_hear_only_of_their_own(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, for_b), (c1, for_c) = await deliveries(conn, 5)
    got = await asyncio.gather(*[pipeline.submit(b1, [i]) for i in for_b],
                               *[pipeline.submit(c1, [i]) for i in for_c],
                               pipeline.submit(b1, for_c[:1]))
    assert got == [{i} for i in for_b + for_c] + [set()]
    assert await messages.queue_depth(conn, b1) == await messages.queue_depth(conn, c1) == 0


async def test_the_same_delivery_acked_twice_in_one_batch_is_removed_once(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, for_b), _ = await deliveries(conn)
    first, second = await asyncio.gather(pipeline.submit(b1, for_b), pipeline.submit(b1, for_b))
    assert first == second == set(for_b)  # each caller: the delivery is gone
    assert await messages.queue_depth(conn, b1) == 0


async def test_a_failed_batch_fails_its_callers_and_the_pipeline_goes_on(
        conn: asyncpg.Connection, pipeline: AckPipeline) -> None:
    (b1, for_b), _ = await deliveries(conn)
    with pytest.raises(ValueError, match="not a lowercase UUID"):  # the ids' array text
        await pipeline.submit("not-a-device-id", ["not-a-delivery-id"])
    assert await pipeline.submit(b1, for_b) == set(for_b)


async def test_a_removal_commits_without_waiting_for_the_disk_and_nothing_after_it_does(
        conn: asyncpg.Connection) -> None:
    """``ack_deliveries`` switches off ``synchronous_commit`` for its own transaction only
    (docs/PROTOCOL.md §3.5: a lost acknowledgement is a redelivery); the connection's next
    transaction, such as a batch of sends on the same pooled connection, waits for the disk."""
    (b1, for_b), _ = await deliveries(conn, 2)
    async with conn.transaction():
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        gone = await conn.fetch("SELECT * FROM ack_deliveries($1::uuid[], $2::uuid[])",
                                [b1] * len(for_b), for_b)
        assert sorted((r["device_id"], r["delivery_id"]) for r in gone) == sorted(
            (b1, d) for d in for_b)
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
    assert await conn.fetchval("SHOW synchronous_commit") == "on"
    assert await messages.queue_depth(conn, b1) == 0


async def test_acknowledgements_within_the_linger_share_one_statement(
        conn: asyncpg.Connection, lingering: AckPipeline) -> None:
    (b1, for_b), (c1, for_c) = await deliveries(conn, 2)
    first = lingering.submit(b1, for_b[:1])
    await asyncio.sleep(0.2)  # the flusher has the first and waits for more
    assert not first.done() and lingering.statements == 0
    assert await messages.queue_depth(conn, b1) == 2
    rest = [lingering.submit(b1, for_b[1:]), lingering.submit(c1, for_c)]  # 4 ids: a batch
    assert await asyncio.gather(first, *rest) == [set(for_b[:1]), set(for_b[1:]), set(for_c)]
    assert lingering.statements == 1
    assert await messages.queue_depth(conn, b1) == await messages.queue_depth(conn, c1) == 0


async def test_a_lone_acknowledgement_is_removed_when_the_linger_ends(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    (b1, for_b), _ = await deliveries(conn)
    async with running(db_dsn, linger=0.05) as acks:
        assert await acks.submit(b1, for_b) == set(for_b)
        assert acks.statements == 1
    assert await messages.queue_depth(conn, b1) == 0


async def test_stopping_removes_what_is_queued_without_waiting_for_the_linger(
        conn: asyncpg.Connection, lingering: AckPipeline) -> None:
    (b1, for_b), (c1, for_c) = await deliveries(conn)
    waiting = [lingering.submit(b1, for_b), lingering.submit(c1, for_c)]
    await asyncio.sleep(0.2)
    assert not any(f.done() for f in waiting)
    await lingering.stop()  # the linger is an hour: this returns only by flushing
    assert [f.result() for f in waiting] == [set(for_b), set(for_c)]
    assert await messages.queue_depth(conn, b1) == await messages.queue_depth(conn, c1) == 0
