"""The relay deletes a message's ciphertext once no delivery of it is queued any more
(server/purge.py), on the real relay and database: not while one recipient device still waits
for it, in the transaction of the last acknowledgement, with its row kept (a retry is still
answered as a duplicate), also when the last two are acknowledged at once; a revocation drops
the revoked device's queue (audited) and its messages' ciphertext, by a signed list or by the
directory, and the sweep drops what a send committed for a device already revoked; the running
relay's sweep purges what a relay before alembic migration 0021 kept, once, and from where it
stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from protocol.frames import Deliver
from server import audit
from server.db import Database
from server.purge import CiphertextPurge
from tests.consent_world import count
from tests.helpers import eventually
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer, seal, send_while_offline, thread
from tests.scim_world import scim_world
from tests.server.test_local_delivery import next_deliver

QUEUED = "SELECT count(*) FROM deliveries WHERE device_id = $1"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    # The relay's own sweep runs once a minute: each test here sweeps when it means to.
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


@pytest.fixture
def purger(world: World, relay_db: Database) -> CiphertextPurge:
    """The relay's purge, called on the test's own loop (the relay's pool is on its own)."""
    relay = world.relay.relay
    assert relay.purge is not None
    return CiphertextPurge(relay_db, relay.metrics)


async def kept(world: World, message_id: str) -> bool:
    """Whether the relay still holds the message's ciphertext (its row must still be there)."""
    conn = await world.db()
    try:
        row = await conn.fetchrow("SELECT sealed IS NOT NULL AS kept FROM messages "
                                  "WHERE message_id = $1", uuid.UUID(message_id))
    finally:
        await conn.close()
    assert row is not None, "the message's row is kept for retries, receipts and order"
    return bool(row["kept"])


async def audited(world: World, prefix: str) -> list[tuple[str, str | None,
                                                          Mapping[str, Any]]]:
    conn = await world.db()
    try:
        return [(r.event, r.subject_id, r.details)
                for r in await audit.rows(conn, event_prefix=prefix)]
    finally:
        await conn.close()


async def drained(world: World, device_id: str) -> bool:
    """Whether the device's acknowledgements have removed everything queued for it."""
    return await count(world, QUEUED, uuid.UUID(device_id)) == 0


def purged_total(world: World) -> float:
    value = world.relay.relay.metrics.registry.get_sample_value(
        "lightbox_ciphertext_purged_total")
    return value or 0.0


async def test_the_ciphertext_goes_after_the_last_device_acknowledged_and_a_retry_stays_a_duplicate(
        world: World, purger: CiphertextPurge) -> None:
    alice, bob, carol = (await peer(world, "alice"), await peer(world, "bob"),
                         await peer(world, "carol"))
    tid = await thread(world, alice, bob, carol)
    sealed = seal(alice, tid, [bob, carol])
    mid = sealed.header.message_id
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        first = await a.send(sealed)
        await b.ack([(await next_deliver(b)).delivery_id])
        await eventually(lambda: drained(world, bob.device_id))
        assert (await purger.sweep()).purged == 0
        assert await kept(world, mid)  # carol has not got it yet
        c = await connect(world, carol)
        try:
            got = await next_deliver(c)
            assert isinstance(got, Deliver) and got.message.header.message_id == mid
            await c.ack([got.delivery_id])
            await eventually(lambda: drained(world, carol.device_id))
        finally:
            await c.close()
        assert not await kept(world, mid)  # with the acknowledgement, no sweep
        assert (await purger.sweep()).purged == 0
        again = await a.send(sealed)  # the sender's retry after its ciphertext went
        assert again.duplicate and again.thread_seq == first.thread_seq
    finally:
        await a.close()
        await b.close()


async def test_a_revocation_drops_the_devices_queue_audited_and_then_the_ciphertext_goes(
        world: World, purger: CiphertextPurge) -> None:
    alice, lost = await peer(world, "alice"), await peer(world, "lost")
    tid = await thread(world, alice, lost)
    await send_while_offline(world, alice, lost, tid, b"for the lost phone")
    assert await count(world, QUEUED, uuid.UUID(lost.device_id)) == 1
    conn = await world.db()
    try:
        mid = str(await conn.fetchval("SELECT message_id FROM messages WHERE thread_id = $1",
                                      uuid.UUID(tid)))
    finally:
        await conn.close()
    assert await kept(world, mid)
    r = await world.revoke(world.org, 1, devices=(lost.device_id,))
    assert r.status_code == 200, r.text
    assert await count(world, QUEUED, uuid.UUID(lost.device_id)) == 0
    (event, subject, details), = await audited(world, "revocation.device_revoked")
    assert (event, subject) == ("revocation.device_revoked", lost.device_id)
    assert details == {"wipe": False, "dropped_deliveries": 1, "dropped_messages": [mid]}
    assert not await kept(world, mid)  # with the revocation, no sweep


async def test_a_delivery_committed_for_a_device_already_revoked_is_dropped_by_the_sweep(
        world: World, purger: CiphertextPurge) -> None:
    """A send whose transaction read the thread's devices before a revocation committed can
    commit its delivery after it: the revocation could not drop what it could not see yet.
    Made here by writing that delivery after the revocation, as the send would have."""
    alice, lost = await peer(world, "alice"), await peer(world, "lost")
    tid = await thread(world, alice, lost)
    await send_while_offline(world, alice, lost, tid, b"late")
    conn = await world.db()
    try:
        row = await conn.fetchrow(
            "SELECT d.delivery_id, d.message_pk, d.priority, m.message_id, m.sealed "
            "FROM deliveries d JOIN messages m USING (message_pk) WHERE d.device_id = $1",
            uuid.UUID(lost.device_id))
        assert (await world.revoke(world.org, 1, devices=(lost.device_id,))).status_code == 200
        async with conn.transaction():  # the send's message, its ciphertext and its delivery
            await conn.execute("UPDATE messages SET sealed = $2 WHERE message_pk = $1",
                               row["message_pk"], row["sealed"])
            await conn.execute(
                "INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, "
                "created_at) VALUES ($1, $2, $3, $4, now())", uuid.uuid4(),
                uuid.UUID(lost.device_id), row["message_pk"], row["priority"])
    finally:
        await conn.close()
    mid = str(row["message_id"])
    assert await kept(world, mid)
    report = await purger.sweep()
    assert report.revoked_queues == {lost.device_id: [mid]}
    assert not await kept(world, mid)
    assert await count(world, QUEUED, uuid.UUID(lost.device_id)) == 0
    assert await audited(world, "device.queue_dropped") == [
        ("device.queue_dropped", lost.device_id,
         {"dropped_deliveries": 1, "dropped_messages": [mid]})]
    assert (await purger.sweep()).revoked_queues == {}  # audited once


async def test_a_user_deleted_from_the_directory_leaves_nothing_queued_for_their_devices(
        db_dsn: str, tmp_path: Path) -> None:
    async with scim_world(db_dsn, tmp_path) as sw:
        world = sw.world
        jane, user = await sw.signed_user("jane.doe")
        gone = await peer(world, "jane.doe", user=user)
        alice = await peer(world, "alice")
        tid = await thread(world, alice, gone)
        await send_while_offline(world, alice, gone, tid, b"for jane")
        assert await count(world, QUEUED, uuid.UUID(gone.device_id)) == 1
        r = await sw.scim.delete(f"/Users/{jane['id']}")
        assert r.status_code == 204, r.text
        assert await count(world, QUEUED, uuid.UUID(gone.device_id)) == 0
        (_, subject, details), = await audited(world, "scim.device_revoked")
        assert subject == gone.device_id
        assert details["dropped_deliveries"] == 1
        mid, = details["dropped_messages"]
        assert not await kept(world, mid)


async def test_the_last_two_deliveries_removed_at_once_still_purge_the_ciphertext(
        world: World) -> None:
    """Two devices' acknowledgements of a message's last two deliveries, in transactions
    that overlap: each sees the other's delivery still there (neither has committed). The one
    that commits last purges it (alembic migration 0021: the message is locked and looked at
    again)."""
    alice, bob, carol = (await peer(world, "alice"), await peer(world, "bob"),
                         await peer(world, "carol"))
    tid = await thread(world, alice, bob, carol)
    a = await connect(world, alice)
    try:
        mid = (await a.send(seal(alice, tid, [bob, carol]))).message_id
    finally:
        await a.close()
    assert await kept(world, mid)
    first, second, watcher = await world.db(), await world.db(), await world.db()
    delete = "DELETE FROM deliveries WHERE device_id = $1"
    try:
        async with first.transaction():
            await first.execute(delete, uuid.UUID(bob.device_id))
            tx = second.transaction()
            await tx.start()
            late = asyncio.ensure_future(second.execute(delete, uuid.UUID(carol.device_id)))

            async def waiting() -> bool:
                return bool(await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 "
                    "AND wait_event_type = 'Lock'", second.get_server_pid()))
            await eventually(waiting)  # for the message's row, which the first one holds
        await late
        await tx.commit()
    finally:
        for conn in (first, second, watcher):
            await conn.close()
    assert not await kept(world, mid)


async def test_the_running_relay_sweeps_what_an_earlier_relay_kept_once(
        db_dsn: str, tmp_path: Path) -> None:
    """A message whose deliveries went while a relay before migration 0021 ran (no trigger
    then) keeps its ciphertext with nothing queued: the running relay's sweep finds it, once,
    and then looks only at the messages stored since."""
    async with identity_world(db_dsn, tmp_path, ciphertext_purge_interval=0.2) as world:
        alice, bob = await peer(world, "alice"), await peer(world, "bob")
        tid = await thread(world, alice, bob)
        a, b = await connect(world, alice), await connect(world, bob)
        try:
            acked = await a.send(seal(alice, tid, [bob]))
            await b.ack([(await next_deliver(b)).delivery_id])

            async def purged(message_id: str) -> bool:
                return not await kept(world, message_id)
            await eventually(lambda: purged(acked.message_id))
            left = await a.send(seal(alice, tid, [bob]))
            swept = purged_total(world)
            conn = await world.db()
            try:
                await conn.execute("ALTER TABLE deliveries DISABLE TRIGGER deliveries_purge")
                await conn.execute(
                    "DELETE FROM deliveries WHERE message_pk = (SELECT message_pk FROM "
                    "messages WHERE message_id = $1)", uuid.UUID(left.message_id))
                await conn.execute("ALTER TABLE deliveries ENABLE TRIGGER deliveries_purge")
                assert await kept(world, left.message_id)
                await eventually(lambda: purged(left.message_id))

                async def counted() -> bool:  # counted once the sweep's chunks have committed
                    return purged_total(world) >= swept + 1
                await eventually(counted)
                assert purged_total(world) == swept + 1
                pk = await conn.fetchval("SELECT message_pk FROM messages WHERE message_id = $1",
                                         uuid.UUID(left.message_id))

                async def passed() -> bool:
                    return bool(await conn.fetchval(
                        "SELECT swept_to >= $1 FROM purge_progress", pk))
                await eventually(passed)
            finally:
                await conn.close()
        finally:
            await a.close()
            await b.close()
