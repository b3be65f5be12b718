"""The send pipeline's checks that need no database (server/sends.py ``SendPipeline.check``)
on real sealed messages, and its shutdown: the header must name this connection as sender,
the sealed message fit LIGHTBOX_MAX_MESSAGE_BYTES, the recipients named and the wrapped keys
agree without repeats, a device never send to itself, and the sender's signature verify; a
pipeline stopped with sends still queued, or collected into a batch that waits for another,
answers each ``not_ready``, storing none. Group
commit over a real relay is tests/server/test_send_pipeline.py."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest

from protocol import envelope
from protocol.errors import ErrorCode
from protocol.model import SealedMessage
from server.db import Database
from server.errors import RelayError
from server.hub import Hub
from server.metrics import Metrics
from server.sends import HANDOVER_BATCH, Sender, SendPipeline
from server.store import messages
from tests.identity_world import World
from tests.relay_world import Peer, peer, seal, thread
from tests.server.test_hub import RecordingMember
from tests.server.test_store_threads import new_message

MAX = 64 * 1024


def pipeline(world: World, db: Database, *, verify: bool = True) -> SendPipeline:
    relay = world.relay.relay
    return SendPipeline(db, Metrics(), policy=relay.pipeline.policy, max_message_bytes=MAX,
                        verify_signatures=verify)


def sender(p: Peer) -> Sender:
    return Sender(user_id=p.user_id, device_id=p.device_id,
                  signing_key=p.device.keys.signing.public)


def refusal(pipe: SendPipeline, who: Sender, message: SealedMessage,
            encoded: bytes | None = None) -> tuple[ErrorCode, str]:
    """What ``check`` refuses ``message`` with (``encoded``: its size on the wire, for a
    message the protocol's own encoder would not write)."""
    with pytest.raises(RelayError) as info:
        pipe.check(who, message, envelope.encode_sealed(message) if encoded is None else encoded)
    assert info.value.detail is not None
    return info.value.code, info.value.detail


async def test_a_well_formed_message_from_its_own_sender_passes(world: World,
                                                                relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob])
    pipeline(world, relay_db).check(sender(alice), message, envelope.encode_sealed(message))


async def test_a_header_naming_another_sender_is_sender_mismatch(world: World,
                                                                 relay_db: Database) -> None:
    alice, bob, cat = [await peer(world, n) for n in ("alice", "bob", "cat")]
    message = seal(alice, await thread(world, alice, bob), [bob])
    assert refusal(pipeline(world, relay_db), sender(cat), message) == (
        ErrorCode.SENDER_MISMATCH, "the header names another sender than this connection")


async def test_a_message_over_the_limit_is_message_too_large(world: World,
                                                             relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob], b"x" * MAX)
    assert refusal(pipeline(world, relay_db), sender(alice), message) == (
        ErrorCode.MESSAGE_TOO_LARGE, f"sealed message over {MAX} bytes")


async def test_recipients_that_disagree_with_the_wrapped_keys_are_device_set_mismatch(
        world: World, relay_db: Database) -> None:
    alice, bob, cat = [await peer(world, n) for n in ("alice", "bob", "cat")]
    tid = await thread(world, alice, bob)
    honest = seal(alice, tid, [bob])
    lying = seal(alice, tid, [bob], recipient_ids=[cat.device_id])
    repeated = seal(alice, tid, [bob], recipient_ids=[bob.device_id, bob.device_id])
    for message in (lying, repeated):
        assert refusal(pipeline(world, relay_db, verify=False), sender(alice), message,
                       envelope.encode_sealed(honest)) == (
            ErrorCode.DEVICE_SET_MISMATCH, "recipient_devices and wrapped keys disagree or repeat")


async def test_an_id_in_the_header_that_is_not_a_lowercase_uuid_is_malformed_frame(
        world: World, relay_db: Database) -> None:
    """Every id the header names is checked before the message joins a batch: one that is not
    a UUID would make the batch's statement fail, and with it every other sender's message in
    that batch (each answered ``internal_error``)."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    pipe = pipeline(world, relay_db, verify=False)
    honest = seal(alice, tid, [bob])
    pipe.check(sender(alice), honest, envelope.encode_sealed(honest))
    h = honest.header
    for bad in ({"thread_id": "not-a-uuid"}, {"message_id": "x},{y"},
                {"message_id": h.message_id.upper()}, {"consent_id": "zz"},
                {"attachment_ids": [h.message_id + ",1"]},
                {"thread_id": tid + " "}):
        message = msgspec.structs.replace(honest, header=msgspec.structs.replace(h, **bad))
        assert refusal(pipe, sender(alice), message) == (
            ErrorCode.MALFORMED_FRAME, "an id in the message header is not a lowercase UUID"), bad
    # A recipient's id is checked too (its wrapped key names the same, so both agree).
    odd = "Z" + bob.device_id[1:]
    message = seal(alice, tid, [bob], recipient_ids=[odd])
    message = msgspec.structs.replace(message, keys=[msgspec.structs.replace(message.keys[0],
                                                                          device_id=odd)])
    assert refusal(pipe, sender(alice), message) == (
        ErrorCode.MALFORMED_FRAME, "an id in the message header is not a lowercase UUID")


async def test_a_device_sending_to_itself_is_refused(world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob, alice])
    assert refusal(pipeline(world, relay_db), sender(alice), message) == (
        ErrorCode.DEVICE_SET_MISMATCH, "a device cannot send to itself")


async def test_a_signature_by_another_key_is_sender_mismatch_unless_not_verified(
        world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob])
    impostor = dataclasses.replace(sender(alice), signing_key=bob.device.keys.signing.public)
    assert refusal(pipeline(world, relay_db), impostor, message) == (
        ErrorCode.SENDER_MISMATCH, "the sender device's signature does not verify")
    pipeline(world, relay_db, verify=False).check(impostor, message,
                                                  envelope.encode_sealed(message))


async def test_sends_queued_when_the_pipeline_stops_are_answered_not_ready_and_not_stored(
        world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    pipe = pipeline(world, relay_db)  # never started: nothing takes from its queue
    futures = [pipe.enqueue(sender(alice), seal(alice, tid, [bob], body)) for body in (b"1", b"2")]
    await pipe.stop()
    for fut in futures:
        with pytest.raises(RelayError) as info:
            await fut
        assert (info.value.code, info.value.detail) == (ErrorCode.NOT_READY,
                                                        "relay shutting down")
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()


async def test_a_batch_waiting_for_the_one_before_is_answered_not_ready_when_the_pipeline_stops(
        world: World, relay_db: Database) -> None:
    """Batch 1 waits for its thread's lock (held here); batch 2, of the same thread, is
    collected and waits for batch 1 to hold it. Stopping answers both, storing neither."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    pipe = pipeline(world, relay_db)
    await pipe.start()
    holder = await world.db()
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE", tid)
            first = pipe.enqueue(sender(alice), seal(alice, tid, [bob], b"1"))
            while not await holder.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                await asyncio.sleep(0.02)  # batch 1 waits for the thread's row lock
            second = pipe.enqueue(sender(alice), seal(alice, tid, [bob], b"2"))
            while not pipe._queue.empty():  # collected into batch 2, which waits for batch 1
                await asyncio.sleep(0.01)
            await pipe.stop()
            for fut in (first, second):
                with pytest.raises(RelayError) as info:
                    await asyncio.wait_for(fut, 10)
                assert info.value.code is ErrorCode.NOT_READY
        assert await holder.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await holder.close()


async def test_the_store_is_asked_about_takers_here_and_only_for_a_small_batch(
        world: World, relay_db: Database) -> None:
    """Local delivery (docs/ARCHITECTURE.md §3): the batch store lists what else a device has
    queued only for recipients connected here whose pumps could take a delivery now, and not
    at all for a batch of more than HANDOVER_BATCH messages, whose scans would cost more than
    the reads they save (docs/BENCHMARKS.md, round 10)."""
    pipe = pipeline(world, relay_db)

    def takers(msgs: list[messages.NewMessage]) -> list[str]:  # as a batch asks, after _here
        return pipe._connected_here(msgs, pipe._here(msgs))

    assert takers([new_message("t", "u", "d", ["here"])]) == []  # no hub
    hub = Hub()
    hub.register(RecordingMember("here"))
    hub.register(RecordingMember("busy", taking=False))
    pipe.local = hub
    small = [new_message("t", "u", "d", ["here", "busy", "elsewhere"])
             for _ in range(HANDOVER_BATCH)]
    assert takers(small) == ["here"]
    assert takers([*small, new_message("t", "u", "d", ["here"])]) == []
