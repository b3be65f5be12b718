"""Sends to threads the relay has read before (server/sends.py, "Threads already known"): stored
in one statement when nothing the checks read has changed, and checked again on fresh reads,
with the exact refusal, when something has: over a real relay, real websocket clients and the
real Postgres. Each change is made between two sends of the same socket: through the relay's
own API where it has one (a revocation list, a member added or removed), or as a row another
relay process would have written (a device enrolled)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.sdk.socket import RelaySocket, SendRefused
from protocol.frames import Deliver
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, peer, seal, thread
from tests.server.test_ws import next_of


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


async def batches(world: World) -> dict[str, int]:
    """The relay's ``lightbox_send_batches_total`` by path, from its /metrics page."""
    text = (await world.http.get("/metrics")).text
    return {s.labels["path"]: int(s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "lightbox_send_batches_total"}


async def checks(world: World) -> dict[str, int]:
    """The relay's ``lightbox_known_batch_checks_total`` by check, from its /metrics page."""
    text = (await world.http.get("/metrics")).text
    return {s.labels["check"]: int(s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "lightbox_known_batch_checks_total"}


async def stored_in(world: World, tid: str) -> int:
    """Messages stored in the thread."""
    conn = await world.db()
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM messages WHERE thread_id = $1", uuid.UUID(tid)))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def after_one_send(world: World, *others: str
                         ) -> AsyncIterator[tuple[Peer, list[Peer], str, RelaySocket]]:
    """alice, the others, a thread of them all, and alice's socket once she has sent one
    message to everyone: the relay has read the thread."""
    alice = await peer(world, "alice")
    people = [await peer(world, n) for n in others]
    tid = await thread(world, alice, *people)
    a = await connect(world, alice)
    try:
        await a.send(seal(alice, tid, people, b"one"))
        yield alice, people, tid, a
    finally:
        await a.close()


async def refused(a: RelaySocket, alice: Peer, tid: str, to: list[Peer]) -> SendRefused:
    with pytest.raises(SendRefused) as info:
        await a.send(seal(alice, tid, to, b"two"))
    return info.value


async def test_the_second_send_to_a_thread_is_stored_in_one_statement_and_delivered_in_order(
        world: World) -> None:
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        assert await batches(world) == {"known": 0, "read": 1, "rechecked": 0}
        b = await connect(world, bob)
        try:
            second = await a.send(seal(alice, tid, [bob], b"two"))
            third = await a.send(seal(alice, tid, [bob], b"three"))
            assert await batches(world) == {"known": 2, "read": 1, "rechecked": 0}
            assert [second.thread_seq, third.thread_seq] == [2, 3]
            got = [await next_of(b, Deliver) for _ in range(3)]
            assert [d.thread_seq for d in got] == [1, 2, 3]
        finally:
            await b.close()
    assert await stored_in(world, tid) == 3


async def test_a_device_enrolled_since_the_last_send_is_missing_not_skipped(
        world: World) -> None:
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        desk = str(uuid.uuid4())  # bob's second device, enrolled through another process
        await world.execute(
            "INSERT INTO devices (device_id, user_id, kind, device_certificate, signing_key, "
            "dh_key, status, created_at) VALUES ($1, $2, 'desktop', 'cert', $3, $3, 'active', "
            "now())", uuid.UUID(desk), uuid.UUID(bob.user_id), bytes(32))
        refusal = await refused(a, alice, tid, [bob])
        assert (refusal.code, refusal.missing) == ("device_set_mismatch", [desk])
        assert await batches(world) == {"known": 0, "read": 2, "rechecked": 1}
        # Gone again (revoked), the message goes as first sealed: the known state would refuse
        # it, so fresh reads decide, and the thread's new state is known from then on.
        await world.execute("UPDATE devices SET status = 'revoked' WHERE device_id = $1",
                            uuid.UUID(desk))
        await a.send(seal(alice, tid, [bob], b"two"))
        await a.send(seal(alice, tid, [bob], b"three"))
        assert await batches(world) == {"known": 1, "read": 3, "rechecked": 1}


async def test_a_device_revoked_since_the_last_send_is_stale_and_gets_nothing(
        world: World) -> None:
    async with after_one_send(world, "bob", "cat") as (alice, [bob, cat], tid, a):
        r = await world.revoke(world.org, 1, devices=(cat.device_id,))
        assert r.status_code == 200, r.text
        refusal = await refused(a, alice, tid, [bob, cat])
        assert (refusal.code, refusal.stale) == ("device_set_mismatch", [cat.device_id])
        assert await batches(world) == {"known": 0, "read": 2, "rechecked": 1}
    assert await stored_in(world, tid) == 1


async def test_a_member_added_since_the_last_send_must_be_named(world: World) -> None:
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        cat = await peer(world, "cat")
        r = await world.call(alice.device, "POST", f"/v1/threads/{tid}/participants",
                             json={"users": [cat.user_id], "roles": []})
        assert r.status_code == 204, r.text
        refusal = await refused(a, alice, tid, [bob])
        assert (refusal.code, refusal.missing) == ("device_set_mismatch", [cat.device_id])
        assert await batches(world) == {"known": 0, "read": 2, "rechecked": 1}


async def test_a_sender_removed_since_the_last_send_is_no_longer_a_member(
        world: World) -> None:
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        r = await world.call(bob.device, "DELETE", f"/v1/threads/{tid}/participants/"
                             f"{alice.user_id}")
        assert r.status_code == 204, r.text
        assert (await refused(a, alice, tid, [bob])).code == "not_thread_member"
        assert await batches(world) == {"known": 0, "read": 2, "rechecked": 1}
    assert await stored_in(world, tid) == 1


async def test_a_retry_of_a_message_stored_in_one_statement_is_its_duplicate(
        world: World) -> None:
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        again = seal(alice, tid, [bob], b"two")
        stored = await a.send(again)
        assert await batches(world) == {"known": 1, "read": 1, "rechecked": 0}
        retried = await a.send(again)
        assert (retried.thread_seq, retried.duplicate) == (stored.thread_seq, True)
        assert await batches(world) == {"known": 1, "read": 2, "rechecked": 1}
        with pytest.raises(SendRefused) as info:  # the same id with other bytes
            await a.send(seal(alice, tid, [bob], b"other", message_id=again.header.message_id))
        assert info.value.code == "duplicate_conflict"


async def test_a_change_to_another_thread_costs_one_digest_comparison_then_none(
        world: World) -> None:
    """A thread created elsewhere moves the directory epoch (alembic migration 0016): the next
    batch to the known thread is confirmed by its digest, still in one statement, and the one
    after by the new epoch."""
    async with after_one_send(world, "bob") as (alice, [bob], tid, a):
        await a.send(seal(alice, tid, [bob], b"two"))
        assert await checks(world) == {"epoch": 1, "digest": 0}
        cat = await peer(world, "cat")
        await thread(world, bob, cat)
        await a.send(seal(alice, tid, [bob], b"three"))
        assert await checks(world) == {"epoch": 1, "digest": 1}
        await a.send(seal(alice, tid, [bob], b"four"))
        assert await checks(world) == {"epoch": 2, "digest": 1}
        assert await batches(world) == {"known": 3, "read": 1, "rechecked": 0}
    assert await stored_in(world, tid) == 4
