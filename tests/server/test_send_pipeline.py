"""Group commit pipelined (server/sends.py): the next batch starts while the one before is
still committing, yet no send is answered before its own COMMIT and a thread keeps its order;
a batch of other threads starts even while a batch stored in one statement waits.

A test connection holds ``deliveries`` locked, so a batch that has stored its messages waits at
its deliveries, uncommitted, for as long as the test wants; Postgres's own view of who waits on
a lock (pg_stat_activity) then shows how many batches are in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clients.sdk.socket import SocketClosed
from tests.helpers import seconds
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer, seal, thread
from tests.server.test_known_threads import batches


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, rate_messages_per_minute=100_000) as w:
        yield w


async def _wait_for_blocked(conn: asyncpg.Connection, count: int) -> None:
    """Wait until ``count`` backends of this database wait on a lock (or fail after a while)."""
    deadline = time.monotonic() + seconds(20)
    while True:
        # The blocker asks from inside its transaction, where Postgres would otherwise answer
        # from the activity snapshot of the transaction's first question (a backend connected
        # since, as a new pooled connection, would never be seen).
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        blocked = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND cardinality(pg_blocking_pids(pid)) > 0")
        if blocked >= count:
            return
        assert time.monotonic() < deadline, f"{blocked} batches waiting, expected {count}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def deliveries_locked(world: World
                            ) -> AsyncIterator[tuple[asyncpg.Connection, Any]]:
    """A connection holding ``deliveries`` locked in an open transaction, so that a batch
    waits at its deliveries; the test rolls the transaction back to let it go on."""
    blocker = await asyncpg.connect(world.dsn)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("LOCK TABLE deliveries IN EXCLUSIVE MODE")
        yield blocker, hold
    finally:
        await blocker.close()


async def test_next_batch_starts_while_the_one_before_commits_and_keeps_thread_order(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    first_thread, other_thread = await thread(world, alice, bob), await thread(world, alice, bob)
    sock = await connect(world, alice)
    try:
        async with deliveries_locked(world) as (blocker, hold):
            one = asyncio.create_task(sock.send(seal(alice, first_thread, [bob], b"one")))
            await _wait_for_blocked(blocker, 1)  # batch 1: locks taken, waiting at its deliveries
            two = asyncio.create_task(sock.send(seal(alice, first_thread, [bob], b"two")))
            three = asyncio.create_task(sock.send(seal(alice, other_thread, [bob], b"three")))
            await _wait_for_blocked(blocker, 2)  # batch 2 started before batch 1 committed
            assert not (one.done() or two.done() or three.done()), "accepted before COMMIT"
            await hold.rollback()
            accepted = await asyncio.wait_for(asyncio.gather(one, two, three), seconds(20))
    finally:
        await sock.close()
    assert [(a.thread_id, a.thread_seq) for a in accepted] == [
        (first_thread, 1), (first_thread, 2), (other_thread, 1)]
    conn = await asyncpg.connect(world.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 3
    finally:
        await conn.close()


async def test_relay_stopped_while_a_batch_waits_stores_nothing_of_it(world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    sock = await connect(world, alice)
    try:
        async with deliveries_locked(world) as (blocker, hold):
            sending = asyncio.create_task(sock.send(seal(alice, tid, [bob], b"never stored")))
            await _wait_for_blocked(blocker, 1)
            await asyncio.wait_for(asyncio.to_thread(world.relay.stop), seconds(30))
            with pytest.raises(SocketClosed):  # the outcome is unknown to alice: she retries
                await asyncio.wait_for(sending, seconds(20))
            await hold.rollback()
            # the batch was rolled back, not left running on a closed pool
            assert await blocker.fetchval("SELECT count(*) FROM messages") == 0
            assert await blocker.fetchval("SELECT count(*) FROM deliveries") == 0
    finally:
        await sock.close()


async def test_a_batch_to_other_threads_starts_while_a_one_statement_batch_waits(
        world: World) -> None:
    """Threads the relay knows are stored in one statement, which holds its thread locks
    until it ends: a batch of other threads must not wait for it, one of the same thread
    must, and keeps the thread's order."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    first_thread, other_thread = await thread(world, alice, bob), await thread(world, alice, bob)
    sock = await connect(world, alice)
    try:
        for tid in (first_thread, other_thread):  # read once: both threads are now known
            await sock.send(seal(alice, tid, [bob], b"first"))
        known = (await batches(world))["known"]
        async with deliveries_locked(world) as (blocker, hold):
            one = asyncio.create_task(sock.send(seal(alice, first_thread, [bob], b"one")))
            await _wait_for_blocked(blocker, 1)  # batch 1: in its one statement, waiting
            other = asyncio.create_task(sock.send(seal(alice, other_thread, [bob], b"other")))
            await _wait_for_blocked(blocker, 2)  # batch 2 started although batch 1 waits
            two = asyncio.create_task(sock.send(seal(alice, first_thread, [bob], b"two")))
            await asyncio.sleep(0.2)
            assert not any(t.done() for t in (one, other, two)), "accepted before COMMIT"
            await hold.rollback()
            accepted = await asyncio.wait_for(asyncio.gather(one, other, two), seconds(20))
    finally:
        await sock.close()
    assert [(a.thread_id, a.thread_seq) for a in accepted] == [
        (first_thread, 2), (other_thread, 2), (first_thread, 3)]
    assert (await batches(world))["known"] == known + 3
