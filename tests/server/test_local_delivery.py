"""Local delivery (docs/ARCHITECTURE.md §3): a message stored by the relay process a recipient
is connected to is written to it without reading the queue back, but never out of the queue's
order, past the window, or twice; anything else goes through the read as before."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.socket import RelaySocket, SendRefused
from protocol import envelope
from protocol.errors import ErrorCode
from protocol.frames import Deliver, Error, QueueEmpty
from protocol.model import Priority, SealedMessage
from server import ws
from server.hub import Member
from server.sends import new_message
from server.store import batches, messages
from tests.helpers import eventually, seconds
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal, thread


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, ws_send_window=3) as w:
        yield w


def counted(world: World, name: str, **labels: str) -> float:
    """A counter of the relay's /metrics registry (its own process: the relay runs in a
    thread of the test)."""
    value = world.relay.relay.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def handed_over(world: World) -> float:
    return counted(world, "lightbox_deliveries_written_total", path="handed_over")


def reads(world: World) -> float:
    return counted(world, "lightbox_delivery_reads_total")


async def next_deliver(sock: RelaySocket, timeout: float = 10.0) -> Deliver:
    while True:
        frame = await sock.next_event(seconds(timeout))
        if isinstance(frame, Deliver):
            return frame


async def nothing_more(sock: RelaySocket) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(next_deliver(sock), 0.5)


async def pair(world: World) -> tuple[Peer, Peer, str, RelaySocket, RelaySocket]:
    """Alice and Bob in a thread, both connected, both backlogs (none) read. Alice's too: her
    pump's read at connect is counted by the same metric as Bob's, and on a loaded machine it
    can come after Bob's ``queue_empty``."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    a, b = await connect(world, alice), await connect(world, bob)
    for sock in (a, b):
        while not isinstance(await sock.next_event(seconds(10)), QueueEmpty):
            pass
    return alice, bob, tid, a, b


async def test_a_message_to_a_device_connected_here_is_written_without_reading_the_queue(
        world: World) -> None:
    alice, bob, tid, a, b = await pair(world)
    try:
        before_reads, before_handed = reads(world), handed_over(world)
        bodies = [b"fracture?", b"displaced?", b"please call"]
        for body in bodies:
            sent = seal(alice, tid, [bob], body)
            await a.send(sent)
            d = await next_deliver(b)
            assert d.message.header.message_id == sent.header.message_id
            assert opened(bob, alice, d.message) == body
            await b.ack([d.delivery_id])
        # The relay's own wake-ups were skipped, and no read was needed for any of them.
        assert (reads(world), handed_over(world)) == (before_reads, before_handed + 3)
        db = await world.db()
        try:
            async def all_acknowledged() -> bool:  # an ack has no answer frame
                return bool(await db.fetchval("SELECT count(*) FROM deliveries") == 0)

            assert await eventually(all_acknowledged)
        finally:
            await db.close()
    finally:
        await a.close()
        await b.close()


async def store_unannounced(world: World, sealed: SealedMessage) -> None:
    """Store a message as another relay process would, whose wake-up has not arrived yet (no
    NOTIFY at all here): the thread locked, the message and its deliveries committed."""
    msg = new_message(sealed, envelope.encode_sealed(sealed))
    now = dt.datetime.now(dt.UTC)
    db = await world.db()
    try:
        async with db.transaction():
            await batches.lock_and_read(db, [msg.thread_id], [], now)
            await batches.store_messages(db, [msg], now, channel="elsewhere", notifications=[])
    finally:
        await db.close()


async def test_a_message_queued_by_another_process_not_yet_written_sends_the_next_to_the_read(
        world: World) -> None:
    """The queue's order across relay processes: another process stored an earlier message of
    the thread for Bob, and its wake-up has not come. The message this process stores next
    must not overtake it: the pump reads its queue, and writes both in thread order."""
    alice, bob, tid, a, b = await pair(world)
    try:
        await a.send(seal(alice, tid, [bob], b"warm up"))  # the thread is now known here
        await b.ack([(await next_deliver(b)).delivery_id])
        elsewhere, here = seal(alice, tid, [bob], b"first"), seal(alice, tid, [bob], b"second")
        await store_unannounced(world, elsewhere)
        before_reads, before_handed = reads(world), handed_over(world)
        await a.send(here)
        got = [await next_deliver(b), await next_deliver(b)]
        assert [d.message.header.message_id for d in got] == [
            elsewhere.header.message_id, here.header.message_id]
        assert [opened(bob, alice, d.message) for d in got] == [b"first", b"second"]
        assert reads(world) > before_reads and handed_over(world) == before_handed
    finally:
        await a.close()
        await b.close()


async def test_an_urgent_message_of_another_thread_queued_elsewhere_still_goes_first(
        world: World) -> None:
    """Urgent before routine across threads (PROTOCOL.md §16.5) holds across relay processes:
    an urgent message for Bob in another thread, stored by another process and not yet
    announced, is written before the routine one this process stores after it."""
    alice, bob, tid, a, b = await pair(world)
    try:
        other = await thread(world, alice, bob)
        for t in (tid, other):  # both threads are now known here
            await a.send(seal(alice, t, [bob], b"warm up"))
            await b.ack([(await next_deliver(b)).delivery_id])
        urgent = seal(alice, other, [bob], b"urgent", priority=Priority.URGENT)
        routine = seal(alice, tid, [bob], b"routine")
        await store_unannounced(world, urgent)
        await a.send(routine)
        got = [await next_deliver(b), await next_deliver(b)]
        assert [d.message.header.message_id for d in got] == [
            urgent.header.message_id, routine.header.message_id]
    finally:
        await a.close()
        await b.close()


async def test_handed_over_deliveries_keep_to_the_window_and_the_rest_wait_for_acks(
        world: World) -> None:
    """A window of three: Bob, who does not acknowledge, gets three; the fourth and fifth wait
    in the queue until he acknowledges, then come through the read, in order."""
    alice, bob, tid, a, b = await pair(world)
    try:
        sent = [seal(alice, tid, [bob], f"m{i}".encode()) for i in range(5)]
        for s in sent:
            await a.send(s)
        first = [await next_deliver(b) for _ in range(3)]
        await nothing_more(b)
        await b.ack([d.delivery_id for d in first])
        rest = [await next_deliver(b) for _ in range(2)]
        assert [d.message.header.message_id for d in first + rest] == [
            s.header.message_id for s in sent]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("acknowledged", [False, True], ids=["in_flight", "acknowledged"])
async def test_a_delivery_handed_over_after_a_read_wrote_it_is_not_written_twice(
        world: World, acknowledged: bool) -> None:
    """A read can write a delivery before the process that stored it hands it over (another
    wake-up came between the COMMIT and the hand-over): the pump skips what it has written,
    also when the device has acknowledged it meanwhile (the connection no longer holds it in
    flight, but still knows it among the latest acknowledged)."""
    alice, bob, tid, a, b = await pair(world)
    try:
        first = seal(alice, tid, [bob], b"once")
        await a.send(first)
        d = await next_deliver(b)
        db = await world.db()
        try:
            row = await db.fetchrow(
                "SELECT d.delivery_pk, d.created_at, m.thread_seq, m.priority, m.sealed "
                "FROM deliveries d JOIN messages m USING (message_pk) "
                "WHERE d.delivery_id = $1", d.delivery_id)
            if acknowledged:
                await b.ack([d.delivery_id])

                async def removed() -> bool:
                    left = await db.fetchval("SELECT count(*) FROM deliveries "
                                             "WHERE delivery_id = $1", d.delivery_id)
                    return bool(left == 0)

                assert await eventually(removed)
        finally:
            await db.close()
        again = messages.NewDelivery(bob.device_id, tid, messages.Delivery(
            row["delivery_pk"], d.delivery_id, row["thread_seq"], row["priority"],
            row["created_at"], bytes(row["sealed"])), ())
        member = world.relay.relay.hub.member(bob.device_id)
        assert member is not None
        loop = world.relay.server.servers[0].get_loop()  # the relay's own event loop
        before = handed_over(world)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            _offer(member, [again]), loop))
        second = seal(alice, tid, [bob], b"next")
        await a.send(second)
        assert (await next_deliver(b)).message.header.message_id == second.header.message_id
        assert handed_over(world) == before + 1
    finally:
        await a.close()
        await b.close()


async def _offer(member: Member, new: list[messages.NewDelivery]) -> None:
    member.offer(new)


async def test_a_batch_that_failed_as_a_whole_wakes_its_recipients_here_to_read(
        world: World) -> None:
    """A batch whose connection died may have committed all the same (the answer to COMMIT
    lost), and this process skips its own wake-ups: its recipients connected here read their
    queues. The sender is told to retry, with internal_error."""
    alice, bob, tid, a, b = await pair(world)
    holder, observer = await world.db(), await world.db()
    try:
        await a.send(seal(alice, tid, [bob], b"warm up"))  # the thread is now known here
        await b.ack([(await next_deliver(b)).delivery_id])
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE", tid)
        sending = asyncio.ensure_future(a.send(seal(alice, tid, [bob], b"lost")))

        async def waiting_store() -> int:
            pid = await observer.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%lock_and_store_batch_delivering%'")
            return int(pid or 0)

        pid = await eventually(waiting_store)
        before = reads(world)
        await observer.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(SendRefused) as refused:
            await sending
        assert refused.value.code == ErrorCode.INTERNAL_ERROR.value
        await tx.rollback()

        async def read_again() -> bool:
            return reads(world) > before

        assert await eventually(read_again)
        await nothing_more(b)  # nothing was stored: the read found nothing
    finally:
        await holder.close()
        await observer.close()
        await a.close()
        await b.close()


async def test_what_a_connection_remembers_of_its_deliveries_does_not_grow_with_its_life(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acknowledged deliveries leave the connection's memory; it keeps only the latest few
    (``ACKED_KEPT``, 4 here) to recognise a duplicate ack, which stays quiet. An ack of one
    older than those is answered as for any delivery it does not know."""
    monkeypatch.setattr(ws, "ACKED_KEPT", 4)
    alice, bob, tid, a, b = await pair(world)
    member = world.relay.relay.hub.member(bob.device_id)
    assert isinstance(member, ws._Connection)
    try:
        ids = []
        for i in range(10):
            await a.send(seal(alice, tid, [bob], b"note %d" % i))
            ids.append((await next_deliver(b)).delivery_id)
            await b.ack([ids[-1]])

        async def forgotten() -> bool:
            return not member._sent_ids and list(member._acked_recently) == ids[-4:]

        assert await eventually(forgotten)
        await b.ack([ids[-1]])  # a duplicate of a recent one: no answer
        await b.ack(ids[:2])  # older than the four kept: not known any more
        err = await next_event_of(b, Error)
        assert err.code == ErrorCode.DELIVERY_NOT_FOUND
        assert err.detail.startswith("2 acknowledged deliveries")  # not the duplicate's
        await a.send(seal(alice, tid, [bob], b"after"))
        assert (await next_deliver(b)).delivery_id not in ids
    finally:
        await a.close()
        await b.close()


async def next_event_of(sock: RelaySocket, kind: type[Error]) -> Error:
    while True:
        frame = await sock.next_event(seconds(10))
        if isinstance(frame, kind):
            return frame


async def test_a_message_whose_recipients_are_all_here_wakes_no_other_process(
        world: World) -> None:
    """No wake-up event for a recipient connected to the process that stored its message:
    that process tells its own connections after COMMIT, so a batch whose recipients are all
    here wakes no other relay process and no listening Postgres backend. A recipient connected
    nowhere here (Carol, offline) is still named, alone."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    carol = await peer(world, "carol")
    tid = await thread(world, alice, bob, carol)
    a, b = await connect(world, alice), await connect(world, bob)
    heard: list[dict[str, Any]] = []
    listener = await world.db()
    await listener.add_listener(
        "lightbox_events", lambda _c, _p, _ch, payload: heard.append(json.loads(payload)))
    try:
        for sock in (a, b):
            while not isinstance(await sock.next_event(seconds(10)), QueueEmpty):
                pass
        await a.send(seal(alice, tid, [bob, carol], b"to both"))
        await b.ack([(await next_deliver(b)).delivery_id])

        def named() -> set[str]:
            return {d for e in heard if e.get("kind") == "deliver"
                    for d in e.get("device_ids", [])}

        async def carol_named() -> bool:
            return carol.device_id in named()

        assert await eventually(carol_named)
        await asyncio.sleep(0.5)  # an event for Bob would have come with Carol's
        assert bob.device_id not in named()
    finally:
        await listener.close()
        await a.close()
        await b.close()
